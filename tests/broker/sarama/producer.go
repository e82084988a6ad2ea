// A Go producer built on sarama, for tests/broker/test_sarama.py.
//
// Debian's golang-github-shopify-sarama-dev is sarama 1.22.1, which never sets a record
// batch's MaxTimestamp: every v2 batch it sends carries max_timestamp -1. The test runs this
// program against a real flowbus broker to check the broker computes the field itself.
//
// Usage: producer -brokers HOST:PORT -topic T -count N -timestamp-ms MS
// Prints one line per acknowledged message: "<partition> <offset>".
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/Shopify/sarama"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap HOST:PORT")
	topic := flag.String("topic", "sarama", "topic to write to")
	count := flag.Int("count", 10, "messages to send")
	timestampMs := flag.Int64("timestamp-ms", 0, "timestamp of the first message (ms; 0 = now); each next one is 1 ms later")
	flag.Parse()

	config := sarama.NewConfig()
	config.Version = sarama.V1_0_0_0 // RecordBatch v2 (magic 2)
	config.Producer.RequiredAcks = sarama.WaitForAll
	config.Producer.Return.Successes = true
	config.Producer.Partitioner = sarama.NewManualPartitioner
	config.Producer.Flush.Messages = *count // all messages in one batch where possible
	config.Producer.Flush.Frequency = 50 * time.Millisecond

	producer, err := sarama.NewAsyncProducer([]string{*brokers}, config)
	if err != nil {
		fmt.Fprintln(os.Stderr, "connect:", err)
		os.Exit(2)
	}
	start := time.Now()
	if *timestampMs > 0 {
		start = time.Unix(0, *timestampMs*int64(time.Millisecond))
	}
	for i := 0; i < *count; i++ {
		producer.Input() <- &sarama.ProducerMessage{
			Topic:     *topic,
			Partition: 0,
			Value:     sarama.StringEncoder(fmt.Sprintf("message-%d", i)),
			Timestamp: start.Add(time.Duration(i) * time.Millisecond),
		}
	}
	failed := 0
	for i := 0; i < *count; i++ {
		select {
		case msg := <-producer.Successes():
			fmt.Printf("%d %d\n", msg.Partition, msg.Offset)
		case perr := <-producer.Errors():
			fmt.Fprintln(os.Stderr, "produce:", perr.Err)
			failed++
		}
	}
	if err := producer.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		os.Exit(2)
	}
	if failed > 0 {
		os.Exit(1)
	}
}
