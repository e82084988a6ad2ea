// Go sarama scenarios against a running flowbus broker, for tests/broker/test_sarama.py.
//
// Built with Debian's Go and golang-github-shopify-sarama-dev (sarama 1.22.1, GOPATH mode).
// That sarama cannot produce transactions; the read scenario reads what another client wrote
// in transactions, with either isolation level.
//
// Usage: scenarios SCENARIO HOST:PORT '{"topic": "...", ...}'
// Prints one JSON object on stdout: what the client did and saw. The Python test makes the
// assertions, so a scenario records results (and per-step errors) instead of judging them.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/Shopify/sarama"
)

// Every wait is bounded; the Python side adds a subprocess timeout on top.
const (
	waitMax   = 20 * time.Second
	pollEvery = 50 * time.Millisecond
)

type arguments struct {
	Topic  string `json:"topic"`
	Group  string `json:"group"`
	Group2 string `json:"group2"`
	Codec  string `json:"codec"`
	Count  int    `json:"count"`
	// Isolation is "read_committed" or "read_uncommitted" (the read scenario).
	Isolation string `json:"isolation"`
}

type record struct {
	Member    string            `json:"member,omitempty"`
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Timestamp int64             `json:"timestamp"`
	Key       *string           `json:"key"`
	Value     string            `json:"value"`
	Headers   map[string]string `json:"headers"`
}

type result map[string]interface{}

// codecs maps the tests' codec names to sarama's.
var codecs = map[string]sarama.CompressionCodec{
	"none":   sarama.CompressionNone,
	"gzip":   sarama.CompressionGZIP,
	"snappy": sarama.CompressionSnappy,
	"lz4":    sarama.CompressionLZ4,
	"zstd":   sarama.CompressionZSTD,
}

// newConfig is the client configuration every scenario starts from.
func newConfig() *sarama.Config {
	config := sarama.NewConfig()
	// The newest Kafka version this sarama knows. sarama never asks the broker (no
	// ApiVersions): it derives request versions from this. With it sarama sends Produce v3 and
	// Fetch v4, the oldest versions flowbus advertises.
	config.Version = sarama.V2_2_0_0
	config.ClientID = "flowbus-test-sarama"
	config.Metadata.Retry.Backoff = 100 * time.Millisecond
	config.Producer.Return.Successes = true
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Partitioner = sarama.NewManualPartitioner
	config.Consumer.Return.Errors = true
	config.Consumer.MaxWaitTime = 200 * time.Millisecond
	config.Consumer.Offsets.Initial = sarama.OffsetOldest
	config.Consumer.Offsets.CommitInterval = 100 * time.Millisecond
	config.Consumer.Group.Heartbeat.Interval = 300 * time.Millisecond
	config.Consumer.Group.Session.Timeout = 10 * time.Second
	config.Consumer.Group.Rebalance.Timeout = 10 * time.Second
	config.Consumer.Group.Rebalance.Retry.Backoff = 200 * time.Millisecond
	config.Admin.Timeout = 10 * time.Second
	return config
}

// errorValue turns an error into data for the JSON output: nil, or its message and Kafka code.
func errorValue(err error) interface{} {
	if err == nil {
		return nil
	}
	out := map[string]interface{}{"message": err.Error()}
	switch e := err.(type) {
	case sarama.KError:
		out["code"] = int(e)
	case *sarama.TopicError:
		out["code"] = int(e.Err)
	case *sarama.TopicPartitionError:
		out["code"] = int(e.Err)
	}
	return out
}

// step runs fn and records {"ok": value} or {"error": ...}, so one failing step does not hide
// the others.
func step(fn func() (interface{}, error)) map[string]interface{} {
	value, err := fn()
	if err != nil {
		return map[string]interface{}{"error": errorValue(err)}
	}
	return map[string]interface{}{"ok": value}
}

func fail(context string, err error) {
	fmt.Fprintf(os.Stderr, "%s: %v\n", context, err)
	os.Exit(1)
}

// waitFor polls predicate until it holds or timeout passes; returns its last value.
func waitFor(timeout time.Duration, predicate func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if predicate() {
			return true
		}
		time.Sleep(pollEvery)
	}
	return predicate()
}

func toRecord(member string, msg *sarama.ConsumerMessage) record {
	headers := map[string]string{}
	for _, header := range msg.Headers {
		headers[string(header.Key)] = string(header.Value)
	}
	var key *string
	if msg.Key != nil {
		text := string(msg.Key)
		key = &text
	}
	return record{
		Member:    member,
		Partition: msg.Partition,
		Offset:    msg.Offset,
		Timestamp: msg.Timestamp.UnixNano() / int64(time.Millisecond),
		Key:       key,
		Value:     string(msg.Value),
		Headers:   headers,
	}
}

// records is a list of consumed records shared between goroutines.
type records struct {
	mu   sync.Mutex
	list []record
}

func (r *records) add(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = append(r.list, rec)
}

func (r *records) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.list)
}

// take returns the records so far and empties the list.
func (r *records) take() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.list
	r.list = nil
	return out
}

type session struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
}

func connect(bootstrap string, config *sarama.Config) *session {
	client, err := sarama.NewClient([]string{bootstrap}, config)
	if err != nil {
		fail("connect", err)
	}
	// This sarama's admin cannot share a client: it has one of its own.
	admin, err := sarama.NewClusterAdmin([]string{bootstrap}, config)
	if err != nil {
		fail("admin", err)
	}
	return &session{client: client, admin: admin}
}

func (s *session) close() {
	_ = s.admin.Close()
	_ = s.client.Close()
}

func (s *session) createTopic(topic string, partitions int32, configs map[string]string) error {
	entries := map[string]*string{}
	for name, value := range configs {
		value := value
		entries[name] = &value
	}
	err := s.admin.CreateTopic(topic, &sarama.TopicDetail{
		NumPartitions:     partitions,
		ReplicationFactor: 1,
		ConfigEntries:     entries,
	}, false)
	if err == nil {
		// Let the client's metadata catch up before producing.
		waitFor(waitMax, func() bool {
			ids, err := s.client.Partitions(topic)
			return err == nil && len(ids) == int(partitions)
		})
	}
	return err
}

type watermark struct {
	Low  int64 `json:"low"`
	High int64 `json:"high"`
}

// watermarks are the log start and end offsets of each partition (ListOffsets).
func (s *session) watermarks(topic string) (interface{}, error) {
	if err := s.client.RefreshMetadata(topic); err != nil {
		return nil, err
	}
	ids, err := s.client.Partitions(topic)
	if err != nil {
		return nil, err
	}
	out := map[string]watermark{}
	for _, id := range ids {
		low, err := s.client.GetOffset(topic, id, sarama.OffsetOldest)
		if err != nil {
			return nil, err
		}
		high, err := s.client.GetOffset(topic, id, sarama.OffsetNewest)
		if err != nil {
			return nil, err
		}
		out[strconv.Itoa(int(id))] = watermark{Low: low, High: high}
	}
	return out, nil
}

// committed are a group's committed offsets per partition (OffsetFetch; -1 for none).
func (s *session) committed(group, topic string, partitions int32) (map[string]int64, error) {
	ids := make([]int32, partitions)
	for i := range ids {
		ids[i] = int32(i)
	}
	response, err := s.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: ids})
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, id := range ids {
		block := response.GetBlock(topic, id)
		if block == nil {
			return nil, fmt.Errorf("no offset for partition %d", id)
		}
		if block.Err != sarama.ErrNoError {
			return nil, block.Err
		}
		out[strconv.Itoa(int(id))] = block.Offset
	}
	return out, nil
}

type configEntry struct {
	Value    string `json:"value"`
	Default  bool   `json:"isDefault"`
	ReadOnly bool   `json:"readOnly"`
}

func (s *session) topicConfigs(topic string, names []string) (interface{}, error) {
	entries, err := s.admin.DescribeConfig(sarama.ConfigResource{
		Type: sarama.TopicResource, Name: topic, ConfigNames: names,
	})
	if err != nil {
		return nil, err
	}
	out := map[string]configEntry{}
	for _, entry := range entries {
		out[entry.Name] = configEntry{Value: entry.Value, Default: entry.Default, ReadOnly: entry.ReadOnly}
	}
	return out, nil
}

func (s *session) partitionCount(topic string) (interface{}, error) {
	metadata, err := s.admin.DescribeTopics([]string{topic})
	if err != nil {
		return nil, err
	}
	if metadata[0].Err != sarama.ErrNoError {
		return nil, metadata[0].Err
	}
	return len(metadata[0].Partitions), nil
}

// send produces messages with a new SyncProducer and returns "<partition> <offset>" of each.
func send(client sarama.Client, messages []*sarama.ProducerMessage) ([]string, error) {
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return nil, err
	}
	defer producer.Close()
	return sendWith(producer, messages)
}

func sendWith(producer sarama.SyncProducer, messages []*sarama.ProducerMessage) ([]string, error) {
	if err := producer.SendMessages(messages); err != nil {
		return nil, err
	}
	out := make([]string, len(messages))
	for i, msg := range messages {
		out[i] = fmt.Sprintf("%d %d", msg.Partition, msg.Offset)
	}
	return out, nil
}

func message(topic string, partition int32, key string, value string) *sarama.ProducerMessage {
	msg := &sarama.ProducerMessage{Topic: topic, Partition: partition, Value: sarama.StringEncoder(value)}
	if key != "" {
		msg.Key = sarama.StringEncoder(key)
	}
	return msg
}

// readPartitions reads partitions from the given offsets with partition consumers (no group)
// until count records arrived or the wait runs out, then lingerMs more.
func readPartitions(client sarama.Client, topic string, from map[int32]int64, count int, linger time.Duration) ([]record, error) {
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return nil, err
	}
	defer consumer.Close()
	got := &records{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for partition, offset := range from {
		pc, err := consumer.ConsumePartition(topic, partition, offset)
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func(pc sarama.PartitionConsumer) {
			defer wg.Done()
			defer pc.Close()
			for {
				select {
				case msg := <-pc.Messages():
					got.add(toRecord("", msg))
				case <-done:
					return
				}
			}
		}(pc)
	}
	waitFor(waitMax, func() bool { return got.len() >= count })
	time.Sleep(linger)
	close(done)
	wg.Wait()
	return got.take(), nil
}

var scenarios = map[string]func(bootstrap string, args arguments) result{
	"admin-create-delete":  adminCreateDelete,
	"admin-partitions":     adminPartitions,
	"admin-configs":        adminConfigs,
	"admin-delete-records": adminDeleteRecords,
	"admin-groups":         adminGroups,
	"produce-codec":        produceCodec,
	"idempotent":           idempotent,
	"group":                groupScenario,
	"group-resume":         groupResume,
	"offsets-by-timestamp": offsetsByTimestamp,
	"read":                 readScenario,
}

// CreateTopics (twice: the second reports that it exists), Metadata, DescribeConfigs of the
// configs given at creation, DeleteTopics.
func adminCreateDelete(bootstrap string, args arguments) result {
	s := connect(bootstrap, newConfig())
	defer s.close()
	configs := map[string]string{"retention.ms": "3600000", "cleanup.policy": "compact"}
	out := result{}
	out["created"] = errorValue(s.createTopic(args.Topic, 3, configs))
	out["createdAgain"] = errorValue(s.createTopic(args.Topic, 3, configs))
	out["listed"] = step(func() (interface{}, error) {
		topics, err := s.admin.ListTopics()
		if err != nil {
			return nil, err
		}
		detail, ok := topics[args.Topic]
		if !ok {
			return nil, nil
		}
		return detail.NumPartitions, nil
	})
	out["partitions"] = step(func() (interface{}, error) { return s.partitionCount(args.Topic) })
	out["configs"] = step(func() (interface{}, error) {
		return s.topicConfigs(args.Topic, []string{"retention.ms", "cleanup.policy", "segment.bytes"})
	})
	out["cluster"] = step(func() (interface{}, error) {
		brokers, controller, err := s.admin.DescribeCluster()
		if err != nil {
			return nil, err
		}
		addresses := []string{}
		for _, broker := range brokers {
			addresses = append(addresses, fmt.Sprintf("%d %s", broker.ID(), broker.Addr()))
		}
		// This sarama asks with Metadata v0, which has no controller field: it reports -1.
		return map[string]interface{}{"brokers": addresses, "controller": controller}, nil
	})
	out["deleted"] = errorValue(s.admin.DeleteTopic(args.Topic))
	out["listedAfterDelete"] = step(func() (interface{}, error) {
		listed := func() bool {
			topics, err := s.admin.ListTopics()
			_, ok := topics[args.Topic]
			return err == nil && ok
		}
		waitFor(5*time.Second, func() bool { return !listed() })
		return listed(), nil
	})
	return out
}

// CreatePartitions: grow 1 -> 3, write to the new partition, refuse shrinking.
func adminPartitions(bootstrap string, args arguments) result {
	s := connect(bootstrap, newConfig())
	defer s.close()
	out := result{}
	out["created"] = errorValue(s.createTopic(args.Topic, 1, nil))
	out["grow"] = errorValue(s.admin.CreatePartitions(args.Topic, 3, nil, false))
	out["partitions"] = step(func() (interface{}, error) {
		waitFor(5*time.Second, func() bool {
			count, err := s.partitionCount(args.Topic)
			return err == nil && count == 3
		})
		return s.partitionCount(args.Topic)
	})
	out["shrink"] = errorValue(s.admin.CreatePartitions(args.Topic, 2, nil, false))
	out["sent"] = step(func() (interface{}, error) {
		if err := s.client.RefreshMetadata(args.Topic); err != nil {
			return nil, err
		}
		return send(s.client, []*sarama.ProducerMessage{message(args.Topic, 2, "", "in the new partition")})
	})
	out["offsets"] = step(func() (interface{}, error) { return s.watermarks(args.Topic) })
	return out
}

// AlterConfigs (this sarama has no IncrementalAlterConfigs): set, validate only, a bad value,
// and a second call naming another config (AlterConfigs replaces the whole set).
func adminConfigs(bootstrap string, args arguments) result {
	s := connect(bootstrap, newConfig())
	defer s.close()
	names := []string{"retention.ms", "max.message.bytes", "cleanup.policy"}
	alter := func(entries map[string]string, validateOnly bool) error {
		values := map[string]*string{}
		for name, value := range entries {
			value := value
			values[name] = &value
		}
		return s.admin.AlterConfig(sarama.TopicResource, args.Topic, values, validateOnly)
	}
	describe := func() (interface{}, error) { return s.topicConfigs(args.Topic, names) }
	out := result{}
	out["created"] = errorValue(s.createTopic(args.Topic, 1, map[string]string{"retention.ms": "3600000"}))
	out["initial"] = step(describe)
	out["set"] = errorValue(alter(map[string]string{"retention.ms": "7200000", "max.message.bytes": "200000"}, false))
	out["afterSet"] = step(describe)
	out["validateOnly"] = errorValue(alter(map[string]string{"retention.ms": "1000"}, true))
	out["afterValidateOnly"] = step(describe)
	out["badValue"] = errorValue(alter(map[string]string{"retention.ms": "not-a-number"}, false))
	out["replace"] = errorValue(alter(map[string]string{"cleanup.policy": "compact"}, false))
	out["afterReplace"] = step(describe)
	return out
}

// DeleteRecords: move partition 0's start to offset 4 and partition 1's to its end.
func adminDeleteRecords(bootstrap string, args arguments) result {
	s := connect(bootstrap, newConfig())
	defer s.close()
	out := result{}
	out["created"] = errorValue(s.createTopic(args.Topic, 2, nil))
	messages := []*sarama.ProducerMessage{}
	for i := 0; i < 20; i++ {
		messages = append(messages, message(args.Topic, int32(i%2), "", fmt.Sprintf("r-%d", i)))
	}
	if _, err := send(s.client, messages); err != nil {
		fail("produce", err)
	}
	out["before"] = step(func() (interface{}, error) { return s.watermarks(args.Topic) })
	out["deleted"] = errorValue(s.admin.DeleteRecords(args.Topic, map[int32]int64{0: 4, 1: 10}))
	out["after"] = step(func() (interface{}, error) { return s.watermarks(args.Topic) })
	out["consumed"] = step(func() (interface{}, error) {
		return readPartitions(s.client, args.Topic, map[int32]int64{0: sarama.OffsetOldest, 1: sarama.OffsetOldest}, 6, 500*time.Millisecond)
	})
	return out
}

// memberHandler is a consumer group member: it records what it consumes (marking each record,
// so offsets are committed every CommitInterval) and the partitions of its latest session.
type memberHandler struct {
	name string
	got  *records
	mu   sync.Mutex
	// assignment is the member's partitions in its latest session; nil before the first.
	assignment []int32
	sessions   int
}

func (h *memberHandler) Setup(sess sarama.ConsumerGroupSession) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sessions++
	claims := []int32{}
	for _, partitions := range sess.Claims() {
		claims = append(claims, partitions...)
	}
	sort.Slice(claims, func(i, j int) bool { return claims[i] < claims[j] })
	h.assignment = claims
	return nil
}

func (h *memberHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *memberHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for msg := range claim.Messages() {
		h.got.add(toRecord(h.name, msg))
		sess.MarkMessage(msg, "")
	}
	return nil
}

func (h *memberHandler) current() ([]int32, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.assignment, h.sessions
}

// member is a running consumer group member; stop() leaves the group (LeaveGroup).
type member struct {
	handler *memberHandler
	group   sarama.ConsumerGroup
	stopped chan struct{}
}

func startMember(bootstrap, name, topic, groupID string, got *records) *member {
	group, err := sarama.NewConsumerGroup([]string{bootstrap}, groupID, newConfig())
	if err != nil {
		fail("consumer group", err)
	}
	m := &member{handler: &memberHandler{name: name, got: got}, group: group, stopped: make(chan struct{})}
	go func() {
		for err := range group.Errors() {
			fmt.Fprintf(os.Stderr, "member %s: %v\n", name, err)
		}
	}()
	go func() {
		defer close(m.stopped)
		// One Consume call per session: it returns at each rebalance and is called again.
		for attempt := 0; attempt < 1000; attempt++ {
			if err := group.Consume(context.Background(), []string{topic}, m.handler); err != nil {
				if err == sarama.ErrClosedConsumerGroup {
					return
				}
				fmt.Fprintf(os.Stderr, "member %s consume: %v\n", name, err)
				time.Sleep(100 * time.Millisecond)
			}
		}
	}()
	return m
}

func (m *member) stop() {
	if err := m.group.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "member %s close: %v\n", m.handler.name, err)
	}
	select {
	case <-m.stopped:
	case <-time.After(waitMax):
		fmt.Fprintf(os.Stderr, "member %s did not stop\n", m.handler.name)
	}
}

func (m *member) view() map[string]interface{} {
	assignment, sessions := m.handler.current()
	return map[string]interface{}{"assignment": assignment, "joins": sessions}
}

func produceValues(client sarama.Client, topic string, first, count int, partitions int32) {
	messages := []*sarama.ProducerMessage{}
	for i := first; i < first+count; i++ {
		messages = append(messages, message(topic, int32(i)%partitions, "", fmt.Sprintf("m-%d", i)))
	}
	if _, err := send(client, messages); err != nil {
		fail("produce", err)
	}
}

func (s *session) allCommitted(group, topic string, partitions int32, expected int64) bool {
	committed, err := s.committed(group, topic, partitions)
	if err != nil {
		return false
	}
	for _, offset := range committed {
		if offset != expected {
			return false
		}
	}
	return true
}

// A two-member group on a three-partition topic; one member leaves and the other takes over
// its partitions. The resume half is group-resume, run by the test as a separate process.
func groupScenario(bootstrap string, args arguments) result {
	const partitions = 3
	s := connect(bootstrap, newConfig())
	defer s.close()
	if err := s.createTopic(args.Topic, partitions, nil); err != nil {
		fail("create topic", err)
	}
	out := result{}
	got := &records{}
	a := startMember(bootstrap, "a", args.Topic, args.Group, got)
	b := startMember(bootstrap, "b", args.Topic, args.Group, got)
	out["balanced"] = waitFor(waitMax, func() bool {
		first, _ := a.handler.current()
		second, _ := b.handler.current()
		seen := map[int32]bool{}
		for _, p := range append(append([]int32{}, first...), second...) {
			seen[p] = true
		}
		return len(first) > 0 && len(second) > 0 && len(seen) == partitions && len(first)+len(second) == partitions
	})
	out["assignmentsTwoMembers"] = map[string]interface{}{"a": a.view(), "b": b.view()}

	produceValues(s.client, args.Topic, 0, 60, partitions)
	waitFor(waitMax, func() bool { return got.len() >= 60 })
	waitFor(waitMax, func() bool { return s.allCommitted(args.Group, args.Topic, partitions, 20) })
	out["phaseTwoMembers"] = got.take()
	out["committedTwoMembers"] = step(func() (interface{}, error) { return s.committed(args.Group, args.Topic, partitions) })

	b.stop() // LeaveGroup: a takes over b's partitions
	out["tookOver"] = waitFor(waitMax, func() bool {
		assignment, _ := a.handler.current()
		return len(assignment) == partitions
	})
	out["assignmentsOneMember"] = map[string]interface{}{"a": a.view()}
	produceValues(s.client, args.Topic, 60, 30, partitions)
	waitFor(waitMax, func() bool { return got.len() >= 30 })
	waitFor(waitMax, func() bool { return s.allCommitted(args.Group, args.Topic, partitions, 30) })
	time.Sleep(300 * time.Millisecond) // anything re-delivered would arrive now
	out["phaseOneMember"] = got.take()
	out["committedOneMember"] = step(func() (interface{}, error) { return s.committed(args.Group, args.Topic, partitions) })
	a.stop()
	return out
}

// The restarted client: 20 more records, then a new member of the same group must start at the
// committed offsets and see exactly those.
func groupResume(bootstrap string, args arguments) result {
	const partitions = 3
	s := connect(bootstrap, newConfig())
	defer s.close()
	out := result{}
	out["committedAtStart"] = step(func() (interface{}, error) { return s.committed(args.Group, args.Topic, partitions) })
	produceValues(s.client, args.Topic, 90, 20, partitions)
	got := &records{}
	c := startMember(bootstrap, "c", args.Topic, args.Group, got)
	waitFor(waitMax, func() bool { return got.len() >= 20 })
	waitFor(waitMax, func() bool { return s.allCommittedAtEnd(args.Group, args.Topic, partitions) })
	time.Sleep(time.Second) // re-delivered old records would show up here
	assignment, _ := c.handler.current()
	out["assignment"] = assignment
	out["resumed"] = got.take()
	c.stop()
	out["committedAtEnd"] = step(func() (interface{}, error) { return s.committed(args.Group, args.Topic, partitions) })
	out["watermarks"] = step(func() (interface{}, error) { return s.watermarks(args.Topic) })
	return out
}

// allCommittedAtEnd: the group's committed offsets reached every partition's end.
func (s *session) allCommittedAtEnd(group, topic string, partitions int32) bool {
	committed, err := s.committed(group, topic, partitions)
	if err != nil {
		return false
	}
	for id := int32(0); id < partitions; id++ {
		high, err := s.client.GetOffset(topic, id, sarama.OffsetNewest)
		if err != nil || committed[strconv.Itoa(int(id))] != high {
			return false
		}
	}
	return true
}

type groupView struct {
	State        string `json:"state"`
	ProtocolType string `json:"protocolType"`
	Protocol     string `json:"protocol"`
	Members      int    `json:"members"`
	ErrorCode    int    `json:"errorCode"`
}

// deleteGroups sends DeleteGroups to the group coordinator (this sarama's admin has no method
// for it) and returns the error code of each group.
func (s *session) deleteGroups(groups []string) (interface{}, error) {
	coordinator, err := s.client.Coordinator(groups[0])
	if err != nil {
		return nil, err
	}
	response, err := coordinator.DeleteGroups(&sarama.DeleteGroupsRequest{Groups: groups})
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for group, code := range response.GroupErrorCodes {
		out[group] = int(code)
	}
	return out, nil
}

// Groups through the admin API: DescribeGroups while a member runs and after it left,
// ListGroups, OffsetFetch, an offset set with OffsetCommit, DeleteGroups.
func adminGroups(bootstrap string, args arguments) result {
	s := connect(bootstrap, newConfig())
	defer s.close()
	if err := s.createTopic(args.Topic, 1, nil); err != nil {
		fail("create topic", err)
	}
	messages := []*sarama.ProducerMessage{}
	for i := 0; i < 10; i++ {
		messages = append(messages, message(args.Topic, 0, "", fmt.Sprintf("g-%d", i)))
	}
	if _, err := send(s.client, messages); err != nil {
		fail("produce", err)
	}
	out := result{}
	got := &records{}
	m := startMember(bootstrap, "m", args.Topic, args.Group, got)
	waitFor(waitMax, func() bool { return got.len() >= 10 })
	waitFor(waitMax, func() bool { return s.allCommitted(args.Group, args.Topic, 1, 10) })
	out["consumedWhileRunning"] = got.len()
	describe := func() (interface{}, error) {
		described, err := s.admin.DescribeConsumerGroups([]string{args.Group})
		if err != nil {
			return nil, err
		}
		views := []groupView{}
		for _, g := range described {
			views = append(views, groupView{g.State, g.ProtocolType, g.Protocol, len(g.Members), int(g.Err)})
		}
		return views, nil
	}
	listed := func() (interface{}, error) {
		groups, err := s.admin.ListConsumerGroups()
		if err != nil {
			return nil, err
		}
		out := map[string]string{}
		for _, name := range []string{args.Group, args.Group2} {
			if protocolType, ok := groups[name]; ok {
				out[name] = protocolType
			}
		}
		return out, nil
	}
	committed := func() (interface{}, error) { return s.committed(args.Group, args.Topic, 1) }
	out["describedRunning"] = step(describe)
	out["deleteRunning"] = step(func() (interface{}, error) { return s.deleteGroups([]string{args.Group}) })
	m.stop()
	out["describedEmpty"] = step(describe)
	out["listed"] = step(listed)
	out["committed"] = step(committed)
	// An offset set by an offset manager outside any generation (what a reset tool does).
	out["setOffsets"] = step(func() (interface{}, error) { return nil, s.setOffset(args.Group, args.Topic, 3) })
	out["afterSet"] = step(committed)
	out["setOffsets2"] = step(func() (interface{}, error) { return nil, s.setOffset(args.Group2, args.Topic, 7) })
	out["listedBoth"] = step(listed)
	out["deleted"] = step(func() (interface{}, error) { return s.deleteGroups([]string{args.Group, args.Group2}) })
	out["deleteMissing"] = step(func() (interface{}, error) { return s.deleteGroups([]string{args.Group + "-never-existed"}) })
	out["listedAfterDelete"] = step(listed)
	out["committedAfterDelete"] = step(committed)
	return out
}

// setOffset commits an offset for partition 0 with an offset manager (OffsetCommit with no
// generation) and waits until it is committed.
func (s *session) setOffset(group, topic string, offset int64) error {
	manager, err := sarama.NewOffsetManagerFromClient(group, s.client)
	if err != nil {
		return err
	}
	partition, err := manager.ManagePartition(topic, 0)
	if err != nil {
		_ = manager.Close()
		return err
	}
	// ResetOffset only moves back and MarkOffset only forward: one of them applies.
	partition.ResetOffset(offset, "")
	partition.MarkOffset(offset, "")
	if err := partition.Close(); err != nil {
		_ = manager.Close()
		return err
	}
	if err := manager.Close(); err != nil { // commits what is pending
		return err
	}
	if !waitFor(5*time.Second, func() bool { return s.allCommitted(group, topic, 1, offset) }) {
		return fmt.Errorf("offset %d was not committed for %s", offset, group)
	}
	return nil
}

type produced struct {
	Partition int32             `json:"partition"`
	Key       string            `json:"key"`
	Value     string            `json:"value"`
	Headers   map[string]string `json:"headers"`
}

// Produce with one codec (two sends, so at least two batches per partition), then read back.
func produceCodec(bootstrap string, args arguments) result {
	config := newConfig()
	codec, ok := codecs[args.Codec]
	if !ok {
		fail("codec", fmt.Errorf("unknown codec %q", args.Codec))
	}
	config.Producer.Compression = codec
	s := connect(bootstrap, config)
	defer s.close()
	if err := s.createTopic(args.Topic, 2, nil); err != nil {
		fail("create topic", err)
	}
	all := []produced{}
	messages := []*sarama.ProducerMessage{}
	for i := 0; i < args.Count; i++ {
		p := produced{
			Partition: int32(i % 2),
			Key:       fmt.Sprintf("key-%d", i),
			Value:     fmt.Sprintf("%s-value-%d-%s", args.Codec, i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"),
			Headers:   map[string]string{"index": strconv.Itoa(i), "codec": args.Codec},
		}
		all = append(all, p)
		msg := message(args.Topic, p.Partition, p.Key, p.Value)
		for name, value := range p.Headers {
			msg.Headers = append(msg.Headers, sarama.RecordHeader{Key: []byte(name), Value: []byte(value)})
		}
		messages = append(messages, msg)
	}
	out := result{"produced": all}
	half := args.Count / 2
	acks := []string{}
	for _, part := range [][]*sarama.ProducerMessage{messages[:half], messages[half:]} {
		sent, err := send(s.client, part)
		if err != nil {
			out["sendError"] = errorValue(err)
			return out
		}
		acks = append(acks, sent...)
	}
	out["acks"] = acks
	out["consumed"] = step(func() (interface{}, error) {
		return readPartitions(s.client, args.Topic, map[int32]int64{0: sarama.OffsetOldest, 1: sarama.OffsetOldest}, args.Count, 500*time.Millisecond)
	})
	return out
}

// An idempotent producer (InitProducerId, sequence numbers): five sends of ten.
func idempotent(bootstrap string, args arguments) result {
	config := newConfig()
	config.Producer.Idempotent = true
	config.Net.MaxOpenRequests = 1
	config.Producer.Retry.Max = 5
	s := connect(bootstrap, config)
	defer s.close()
	if err := s.createTopic(args.Topic, 1, nil); err != nil {
		fail("create topic", err)
	}
	// One producer for every send: one producer id, sequence numbers continuing across sends.
	producer, err := sarama.NewSyncProducerFromClient(s.client)
	if err != nil {
		fail("producer", err)
	}
	defer producer.Close()
	values := []string{}
	acks := []string{}
	out := result{}
	for batch := 0; batch < 5; batch++ {
		messages := []*sarama.ProducerMessage{}
		for i := 0; i < 10; i++ {
			value := fmt.Sprintf("idem-%d", batch*10+i)
			values = append(values, value)
			messages = append(messages, message(args.Topic, 0, fmt.Sprintf("k-%d", batch), value))
		}
		sent, err := sendWith(producer, messages)
		if err != nil {
			out["sendError"] = errorValue(err)
			return out
		}
		acks = append(acks, sent...)
	}
	out["produced"] = values
	out["acks"] = acks
	out["consumed"] = step(func() (interface{}, error) {
		return readPartitions(s.client, args.Topic, map[int32]int64{0: sarama.OffsetOldest}, len(values), 500*time.Millisecond)
	})
	return out
}

// ListOffsets by timestamp over two batches, then reading from the offset found.
func offsetsByTimestamp(bootstrap string, args arguments) result {
	s := connect(bootstrap, newConfig())
	defer s.close()
	if err := s.createTopic(args.Topic, 1, nil); err != nil {
		fail("create topic", err)
	}
	baseMs := time.Now().Add(-time.Minute).UnixNano() / int64(time.Millisecond)
	for _, first := range []int{0, 5} {
		messages := []*sarama.ProducerMessage{}
		for i := first; i < first+5; i++ {
			msg := message(args.Topic, 0, "", fmt.Sprintf("t-%d", i))
			msg.Timestamp = time.Unix(0, (baseMs+int64(i)*1000)*int64(time.Millisecond))
			messages = append(messages, msg)
		}
		if _, err := send(s.client, messages); err != nil {
			fail("produce", err)
		}
	}
	probes := map[string]int64{
		"beforeAll": baseMs - 1000, "first": baseMs, "justAfterFirst": baseMs + 1,
		"between3and4": baseMs + 3500, "last": baseMs + 9000, "afterLast": baseMs + 9001,
	}
	answers := map[string]interface{}{}
	for name, timestamp := range probes {
		offset, err := s.client.GetOffset(args.Topic, 0, timestamp)
		if err != nil {
			answers[name] = errorValue(err)
		} else {
			answers[name] = offset
		}
	}
	out := result{"base": baseMs, "answers": answers}
	if from, ok := answers["between3and4"].(int64); ok && from >= 0 {
		out["consumed"] = step(func() (interface{}, error) {
			return readPartitions(s.client, args.Topic, map[int32]int64{0: from}, int(10-from), 500*time.Millisecond)
		})
	}
	out["watermarks"] = step(func() (interface{}, error) { return s.watermarks(args.Topic) })
	return out
}

// Read partition 0 from its start with the isolation level asked for (the topic is written by
// another client: this sarama cannot produce transactions, but reads them).
func readScenario(bootstrap string, args arguments) result {
	config := newConfig()
	switch args.Isolation {
	case "read_committed":
		config.Consumer.IsolationLevel = sarama.ReadCommitted
	case "read_uncommitted":
		config.Consumer.IsolationLevel = sarama.ReadUncommitted
	default:
		fail("isolation", fmt.Errorf("unknown isolation %q", args.Isolation))
	}
	s := connect(bootstrap, config)
	defer s.close()
	out := result{}
	out["consumed"] = step(func() (interface{}, error) {
		return readPartitions(s.client, args.Topic, map[int32]int64{0: sarama.OffsetOldest}, args.Count, time.Second)
	})
	out["watermarks"] = step(func() (interface{}, error) { return s.watermarks(args.Topic) })
	return out
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: scenarios SCENARIO HOST:PORT '{...}'")
		os.Exit(2)
	}
	scenario, ok := scenarios[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "unknown scenario %q\n", os.Args[1])
		os.Exit(2)
	}
	args := arguments{}
	if len(os.Args) > 3 {
		if err := json.Unmarshal([]byte(os.Args[3]), &args); err != nil {
			fail("arguments", err)
		}
	}
	sarama.Logger = log.New(os.Stderr, "[sarama] ", log.Lmicroseconds)
	encoded, err := json.Marshal(scenario(os.Args[2], args))
	if err != nil {
		fail("encode", err)
	}
	fmt.Println(string(encoded))
}
