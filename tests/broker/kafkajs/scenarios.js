// KafkaJS scenarios against a running flowbus broker, for tests/broker/test_kafkajs.py and
// test_kafkajs_security.py (the sasl-* scenarios).
//
// Usage: node scenarios.js SCENARIO HOST:PORT '{"topic": "...", ...}'
// Prints one JSON object on stdout: what the client did and saw. The Python test makes the
// assertions, so a scenario records results (and per-step errors) instead of judging them.
// KafkaJS logs (warnings and errors only) go to stderr.
//
// A secured listener: the arguments carry `"security": {"sasl": "scram-sha-512", "username":
// "alice", "caFile": "ca.pem"}` (caFile for SASL_SSL, none for SASL_PLAINTEXT) and the password
// comes from the environment variable PASSWORD_VARIABLE, never from argv (`ps` shows argv).
'use strict'

const fs = require('fs')
const { Kafka, logLevel, ConfigResourceTypes } = require('kafkajs')
const codecs = require('./codecs')

codecs.register()

// Every wait in a scenario is bounded; the Python side adds a subprocess timeout on top.
const WAIT_MS_MAX = 20000
const POLL_MS = 50
// Fast group reactions: the broker runs with no initial rebalance delay in the tests.
const CONSUMER_TIMINGS = {
  sessionTimeout: 10000,
  rebalanceTimeout: 10000,
  heartbeatInterval: 300,
  maxWaitTimeInMs: 200,
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

/** Poll `predicate` until it is true or `timeoutMs` passes; returns its last value. */
async function waitFor(predicate, timeoutMs = WAIT_MS_MAX) {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await predicate()) return true
    await sleep(POLL_MS)
  }
  return Boolean(await predicate())
}

/** A KafkaJS error as plain data for the JSON output. */
function describeError(error) {
  return {
    name: error.name,
    type: error.type || null,
    code: error.code === undefined ? null : error.code,
    message: error.message,
    groups: error.groups
      ? error.groups.map(g => ({ groupId: g.groupId, errorCode: g.errorCode, type: g.error && g.error.type }))
      : undefined,
  }
}

/** Run `fn`; return `{ok: result}` or `{error: ...}` so one failing step does not hide the others. */
async function step(fn) {
  try {
    const result = await fn()
    return { ok: result === undefined ? null : result }
  } catch (error) {
    return { error: describeError(error) }
  }
}

function toRecord(partition, message) {
  const headers = {}
  for (const [name, value] of Object.entries(message.headers || {})) {
    headers[name] = value === undefined || value === null ? null : value.toString()
  }
  return {
    partition,
    offset: Number(message.offset),
    timestamp: Number(message.timestamp),
    key: message.key === null ? null : message.key.toString(),
    value: message.value === null ? null : message.value.toString(),
    headers,
  }
}

const PASSWORD_VARIABLE = 'KAFKAJS_SASL_PASSWORD'

/** KafkaJS's `ssl` and `sasl` options for `security` (see the top of this file); none without it. */
function securityOptions(security) {
  if (!security) return {}
  const password = process.env[PASSWORD_VARIABLE]
  if (password === undefined) {
    throw new Error(`security given but ${PASSWORD_VARIABLE} is not set`)
  }
  const options = { sasl: { mechanism: security.sasl, username: security.username, password } }
  if (security.caFile) {
    // Only this CA is trusted; the certificate must name the host connected to (127.0.0.1).
    options.ssl = { ca: [fs.readFileSync(security.caFile, 'utf-8')] }
  }
  return options
}

function makeKafka(bootstrap, clientId, security = null) {
  return new Kafka({
    clientId,
    brokers: [bootstrap],
    logLevel: logLevel.WARN,
    logCreator: () => ({ namespace, level, label, log }) => {
      process.stderr.write(`${label} [${namespace}] ${JSON.stringify(log)}\n`)
    },
    retry: { retries: 5, initialRetryTime: 100, maxRetryTime: 1000 },
    ...securityOptions(security),
  })
}

async function createTopic(admin, topic, numPartitions, configEntries = []) {
  return admin.createTopics({
    topics: [{ topic, numPartitions, replicationFactor: 1, configEntries }],
    waitForLeaders: true,
  })
}

/**
 * Consume `topic` in group `groupId` from the beginning until `count` records arrived (or the
 * wait runs out), then `lingerMs` more to catch records that should not be there.
 */
async function consumeAll(kafka, { topic, groupId, count, readUncommitted = false, lingerMs = 500 }) {
  const consumer = kafka.consumer({ groupId, readUncommitted, ...CONSUMER_TIMINGS })
  const records = []
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({ eachMessage: async ({ partition, message }) => records.push(toRecord(partition, message)) })
  await waitFor(() => records.length >= count)
  await sleep(lingerMs)
  await consumer.disconnect()
  return records
}

async function highWatermarks(admin, topic) {
  const offsets = await admin.fetchTopicOffsets(topic)
  const result = {}
  for (const { partition, high, low } of offsets) {
    result[partition] = { low: Number(low), high: Number(high) }
  }
  return result
}

async function committedOffsets(admin, groupId, topic) {
  const [entry] = await admin.fetchOffsets({ groupId, topics: [topic] })
  const result = {}
  for (const { partition, offset } of entry.partitions) {
    result[partition] = Number(offset)
  }
  return result
}

/** Topic configs by name: value, whether it is the default, and whether it is read-only. */
async function topicConfigs(admin, topic, names) {
  const described = await admin.describeConfigs({
    resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configNames: names }],
    includeSynonyms: false,
  })
  const [resource] = described.resources
  if (resource.errorCode !== 0) {
    throw new Error(`DescribeConfigs error ${resource.errorCode}: ${resource.errorMessage}`)
  }
  const result = {}
  for (const entry of resource.configEntries) {
    result[entry.configName] = { value: entry.configValue, isDefault: entry.isDefault, readOnly: entry.readOnly }
  }
  return result
}

async function partitionCount(admin, topic) {
  const metadata = await admin.fetchTopicMetadata({ topics: [topic] })
  return metadata.topics[0].partitions.length
}

const scenarios = {}

// CreateTopics (twice: the second reports that it exists), Metadata, DescribeConfigs of the
// configs given at creation, DeleteTopics.
scenarios['admin-create-delete'] = async (kafka, { topic }) => {
  const admin = kafka.admin()
  await admin.connect()
  const configEntries = [
    { name: 'retention.ms', value: '3600000' },
    { name: 'cleanup.policy', value: 'compact' },
  ]
  const out = {}
  out.created = await step(() => createTopic(admin, topic, 3, configEntries))
  out.createdAgain = await step(() => createTopic(admin, topic, 3, configEntries))
  out.listed = (await admin.listTopics()).includes(topic)
  out.partitions = await step(() => partitionCount(admin, topic))
  out.configs = await step(() => topicConfigs(admin, topic, ['retention.ms', 'cleanup.policy', 'segment.bytes']))
  out.cluster = await step(async () => {
    const cluster = await admin.describeCluster()
    return { brokers: cluster.brokers.map(b => ({ nodeId: b.nodeId, host: b.host, port: b.port })), controller: cluster.controller }
  })
  out.deleted = await step(() => admin.deleteTopics({ topics: [topic], timeout: 5000 }))
  out.listedAfterDelete = await step(async () => {
    await waitFor(async () => !(await admin.listTopics()).includes(topic), 5000)
    return (await admin.listTopics()).includes(topic)
  })
  await admin.disconnect()
  return out
}

// CreatePartitions: grow 1 -> 3, write to the new partition, refuse shrinking.
scenarios['admin-partitions'] = async (kafka, { topic }) => {
  const admin = kafka.admin()
  await admin.connect()
  const out = {}
  out.created = await step(() => createTopic(admin, topic, 1))
  out.grow = await step(() => admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] }))
  out.partitions = await step(async () => {
    await waitFor(async () => (await partitionCount(admin, topic)) === 3, 5000)
    return partitionCount(admin, topic)
  })
  out.shrink = await step(() => admin.createPartitions({ topicPartitions: [{ topic, count: 2 }] }))
  const producer = kafka.producer()
  await producer.connect()
  out.sent = await step(() => producer.send({ topic, messages: [{ partition: 2, value: 'in the new partition' }] }))
  await producer.disconnect()
  out.offsets = await step(() => highWatermarks(admin, topic))
  await admin.disconnect()
  return out
}

// AlterConfigs (KafkaJS has no IncrementalAlterConfigs): set, validate only, a bad value, and a
// second call that names other configs (AlterConfigs replaces the whole set: the rest revert).
scenarios['admin-configs'] = async (kafka, { topic }) => {
  const admin = kafka.admin()
  await admin.connect()
  const names = ['retention.ms', 'max.message.bytes', 'cleanup.policy']
  const alter = (configEntries, validateOnly = false) =>
    admin.alterConfigs({ validateOnly, resources: [{ type: ConfigResourceTypes.TOPIC, name: topic, configEntries }] })
  const out = {}
  out.created = await step(() => createTopic(admin, topic, 1, [{ name: 'retention.ms', value: '3600000' }]))
  out.initial = await step(() => topicConfigs(admin, topic, names))
  out.set = await step(() =>
    alter([
      { name: 'retention.ms', value: '7200000' },
      { name: 'max.message.bytes', value: '200000' },
    ])
  )
  out.afterSet = await step(() => topicConfigs(admin, topic, names))
  out.validateOnly = await step(() => alter([{ name: 'retention.ms', value: '1000' }], true))
  out.afterValidateOnly = await step(() => topicConfigs(admin, topic, names))
  out.badValue = await step(() => alter([{ name: 'retention.ms', value: 'not-a-number' }]))
  out.replace = await step(() => alter([{ name: 'cleanup.policy', value: 'compact' }]))
  out.afterReplace = await step(() => topicConfigs(admin, topic, names))
  await admin.disconnect()
  return out
}

// DeleteRecords: move partition 0's start to offset 4 and partition 1's to its end (-1).
scenarios['admin-delete-records'] = async (kafka, { topic, group }) => {
  const admin = kafka.admin()
  await admin.connect()
  const out = {}
  out.created = await step(() => createTopic(admin, topic, 2))
  const producer = kafka.producer()
  await producer.connect()
  const messages = []
  for (let i = 0; i < 20; i++) messages.push({ partition: i % 2, value: `r-${i}` })
  await producer.send({ topic, messages })
  await producer.disconnect()
  out.before = await step(() => highWatermarks(admin, topic))
  out.deleted = await step(() =>
    admin.deleteTopicRecords({
      topic,
      partitions: [
        { partition: 0, offset: '4' },
        { partition: 1, offset: '-1' },
      ],
    })
  )
  out.after = await step(() => highWatermarks(admin, topic))
  out.consumed = await step(() => consumeAll(kafka, { topic, groupId: group, count: 6 }))
  await admin.disconnect()
  return out
}

// Groups through the admin API: DescribeGroups while a member runs and after it left,
// ListGroups, OffsetFetch, offsets set and reset (OffsetCommit), DeleteGroups.
scenarios['admin-groups'] = async (kafka, { topic, group, group2 }) => {
  const admin = kafka.admin()
  await admin.connect()
  const out = {}
  await createTopic(admin, topic, 1)
  const producer = kafka.producer()
  await producer.connect()
  const messages = []
  for (let i = 0; i < 10; i++) messages.push({ value: `g-${i}` })
  await producer.send({ topic, messages })
  await producer.disconnect()

  const consumer = kafka.consumer({ groupId: group, ...CONSUMER_TIMINGS })
  let consumed = 0
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({ autoCommitThreshold: 1, eachMessage: async () => void consumed++ })
  await waitFor(() => consumed >= 10)
  out.consumedWhileRunning = consumed
  await waitFor(async () => (await committedOffsets(admin, group, topic))[0] === 10, 5000)
  const describe = async () => {
    const { groups } = await admin.describeGroups([group])
    return groups.map(g => ({
      groupId: g.groupId,
      state: g.state,
      protocolType: g.protocolType,
      protocol: g.protocol,
      members: g.members.length,
      errorCode: g.errorCode,
    }))
  }
  out.describedRunning = await step(describe)
  out.deleteRunning = await step(() => admin.deleteGroups([group]))
  await consumer.disconnect()
  out.describedEmpty = await step(describe)
  const listed = async () => {
    const { groups } = await admin.listGroups()
    return groups.filter(g => g.groupId === group || g.groupId === group2)
  }
  out.listed = await step(listed)
  out.committed = await step(() => committedOffsets(admin, group, topic))
  // setOffsets and resetOffsets each take 5 s whatever the broker: the consumer they start pauses
  // its one topic, so its fetch loop sleeps maxWaitTimeInMs (KafkaJS's default 5000, which the
  // admin client does not let us set) before the first FETCH event, the one that stops it. The
  // two run at once, on two groups: the reset replaces the offset the member above committed (10);
  // the second group exists only through the offsets the admin client commits.
  const [resetOffsets, setOffsets2] = await Promise.all([
    step(() => admin.resetOffsets({ groupId: group, topic, earliest: true })),
    step(() => admin.setOffsets({ groupId: group2, topic, partitions: [{ partition: 0, offset: '7' }] })),
  ])
  out.resetOffsets = resetOffsets
  out.setOffsets2 = setOffsets2
  out.afterReset = await step(() => committedOffsets(admin, group, topic))
  out.afterSet2 = await step(() => committedOffsets(admin, group2, topic))
  out.listedBoth = await step(listed)
  out.deleted = await step(() => admin.deleteGroups([group, group2]))
  out.deleteMissing = await step(() => admin.deleteGroups([`${group}-never-existed`]))
  out.listedAfterDelete = await step(listed)
  out.committedAfterDelete = await step(() => committedOffsets(admin, group, topic))
  await admin.disconnect()
  return out
}

// Produce with one codec (two sends, so two batches per partition), then read back.
scenarios['produce-codec'] = async (kafka, { topic, group, codec, count }) => {
  const admin = kafka.admin()
  await admin.connect()
  await createTopic(admin, topic, 2)
  const producer = kafka.producer()
  await producer.connect()
  const produced = []
  for (let i = 0; i < count; i++) {
    produced.push({
      partition: i % 2,
      key: `key-${i}`,
      value: `${codec}-value-${i}-${'x'.repeat(50)}`,
      headers: { index: String(i), codec },
    })
  }
  const half = Math.floor(count / 2)
  const sendResults = []
  for (const part of [produced.slice(0, half), produced.slice(half)]) {
    const result = await producer.send({ topic, compression: codecs.CODECS[codec], messages: part })
    sendResults.push(...result.map(r => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: Number(r.baseOffset) })))
  }
  await producer.disconnect()
  const consumed = await consumeAll(kafka, { topic, groupId: group, count })
  await admin.disconnect()
  return { produced, sendResults, consumed }
}

// An idempotent producer (InitProducerId, sequence numbers): five sends of ten.
scenarios.idempotent = async (kafka, { topic, group }) => {
  const admin = kafka.admin()
  await admin.connect()
  await createTopic(admin, topic, 1)
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  const produced = []
  const sendResults = []
  for (let send = 0; send < 5; send++) {
    const messages = []
    for (let i = 0; i < 10; i++) messages.push({ key: `k-${send}`, value: `idem-${send * 10 + i}` })
    produced.push(...messages)
    const result = await producer.send({ topic, acks: -1, messages })
    sendResults.push(...result.map(r => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: Number(r.baseOffset) })))
  }
  await producer.disconnect()
  const consumed = await consumeAll(kafka, { topic, groupId: group, count: produced.length })
  await admin.disconnect()
  return { produced: produced.map(m => m.value), sendResults, consumed }
}

/** A group member that records what it consumes and its latest assignment. */
async function startMember(kafka, name, topic, groupId, records) {
  const member = { name, assignment: null, joins: 0 }
  const consumer = kafka.consumer({ groupId, ...CONSUMER_TIMINGS })
  consumer.on(consumer.events.GROUP_JOIN, event => {
    member.joins++
    member.assignment = (event.payload.memberAssignment[topic] || []).slice().sort()
  })
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({
    autoCommitThreshold: 1,
    eachMessage: async ({ partition, message }) => {
      records.push({ member: name, ...toRecord(partition, message) })
    },
  })
  member.consumer = consumer
  return member
}

async function produceValues(kafka, topic, first, count, partitions) {
  const producer = kafka.producer()
  await producer.connect()
  const messages = []
  for (let i = first; i < first + count; i++) messages.push({ partition: i % partitions, value: `m-${i}` })
  await producer.send({ topic, messages })
  await producer.disconnect()
}

function assignmentView(members) {
  return Object.fromEntries(members.map(m => [m.name, { assignment: m.assignment, joins: m.joins }]))
}

// A two-member group on a three-partition topic; one member leaves and the other takes over
// its partitions. Offsets are committed as records are processed. The resume half is
// `group-resume`, run by the test as a separate process (a restarted client).
scenarios.group = async (kafka, { topic, group }) => {
  const partitions = 3
  const admin = kafka.admin()
  await admin.connect()
  await createTopic(admin, topic, partitions)
  const out = {}
  const records = []
  const a = await startMember(kafka, 'a', topic, group, records)
  const b = await startMember(kafka, 'b', topic, group, records)
  const balanced = () =>
    a.assignment && b.assignment && a.assignment.length > 0 && b.assignment.length > 0 &&
    new Set([...a.assignment, ...b.assignment]).size === partitions &&
    a.assignment.length + b.assignment.length === partitions
  out.balanced = await waitFor(balanced)
  out.assignmentsTwoMembers = assignmentView([a, b])

  await produceValues(kafka, topic, 0, 60, partitions)
  await waitFor(() => records.length >= 60)
  const allCommitted = async expected => {
    const committed = await committedOffsets(admin, group, topic)
    return [...Array(partitions).keys()].every(p => committed[p] === expected)
  }
  await waitFor(() => allCommitted(20))
  out.phaseTwoMembers = records.splice(0)
  out.committedTwoMembers = await committedOffsets(admin, group, topic)

  await b.consumer.disconnect() // LeaveGroup: a takes over b's partitions
  out.tookOver = await waitFor(() => a.assignment && a.assignment.length === partitions)
  out.assignmentsOneMember = assignmentView([a])
  await produceValues(kafka, topic, 60, 30, partitions)
  await waitFor(() => records.length >= 30)
  await waitFor(() => allCommitted(30))
  await sleep(300) // anything re-delivered would arrive now
  out.phaseOneMember = records.splice(0)
  out.committedOneMember = await committedOffsets(admin, group, topic)
  await a.consumer.disconnect()
  await admin.disconnect()
  return out
}

// The restarted client: 20 more records are produced, then a new member of the same group
// must start at the committed offsets and see exactly those.
scenarios['group-resume'] = async (kafka, { topic, group }) => {
  const partitions = 3
  const admin = kafka.admin()
  await admin.connect()
  const out = {}
  out.committedAtStart = await committedOffsets(admin, group, topic)
  await produceValues(kafka, topic, 90, 20, partitions)
  const records = []
  const c = await startMember(kafka, 'c', topic, group, records)
  await waitFor(() => records.length >= 20)
  await sleep(1000) // re-delivered old records would show up here
  out.assignment = c.assignment
  out.resumed = records.slice()
  await c.consumer.disconnect()
  out.committedAtEnd = await committedOffsets(admin, group, topic)
  out.watermarks = await highWatermarks(admin, topic)
  await admin.disconnect()
  return out
}

async function inTransaction(producer, topic, values, finish, offsets = null) {
  const transaction = await producer.transaction()
  await transaction.send({ topic, messages: values.map(value => ({ value })) })
  if (offsets !== null) {
    await transaction.sendOffsets(offsets)
  }
  if (finish === 'commit') await transaction.commit()
  if (finish === 'abort') await transaction.abort()
  return transaction
}

const batchOf = prefix => [0, 1, 2, 3, 4].map(i => `${prefix}-${i}`)

// Transactions: commit, abort, commit, then one left open while a read_committed consumer reads
// (it must stop at the open transaction), then committed; a read_uncommitted consumer sees all.
// Offsets sent in a transaction (TxnOffsetCommit) count only when it commits.
scenarios.transactions = async (kafka, { topic, group, offsetsGroup, transactionalId }) => {
  const admin = kafka.admin()
  await admin.connect()
  await createTopic(admin, topic, 1)
  const out = {}
  const producer = kafka.producer({ transactionalId, idempotent: true, maxInFlightRequests: 1 })
  await producer.connect()
  await inTransaction(producer, topic, batchOf('a'), 'commit')
  await inTransaction(producer, topic, batchOf('b'), 'abort')
  await inTransaction(producer, topic, batchOf('c'), 'commit')
  const open = await inTransaction(producer, topic, batchOf('d'), 'none')

  const committedReader = kafka.consumer({ groupId: group, readUncommitted: false, ...CONSUMER_TIMINGS })
  const seen = []
  await committedReader.connect()
  await committedReader.subscribe({ topic, fromBeginning: true })
  await committedReader.run({ eachMessage: async ({ partition, message }) => seen.push(toRecord(partition, message)) })
  await waitFor(() => seen.length >= 10)
  await sleep(1000) // records of the open transaction must not arrive while it is open
  out.readCommittedWhileOpen = seen.slice()
  await open.commit()
  await waitFor(() => seen.length >= 15)
  await sleep(500)
  out.readCommittedAfterCommit = seen.slice()
  await committedReader.disconnect()

  out.readUncommitted = await consumeAll(kafka, { topic, groupId: `${group}-uncommitted`, count: 20, readUncommitted: true })
  out.watermarks = await highWatermarks(admin, topic)

  const sendOffsets = offset => ({
    consumerGroupId: offsetsGroup,
    topics: [{ topic, partitions: [{ partition: 0, offset: String(offset) }] }],
  })
  out.offsetsCommitted = await step(() => inTransaction(producer, topic, ['e-0'], 'commit', sendOffsets(7)).then(() => true))
  out.offsetsAborted = await step(() => inTransaction(producer, topic, ['f-0'], 'abort', sendOffsets(9)).then(() => true))
  out.groupOffsets = await step(() => committedOffsets(admin, offsetsGroup, topic))
  await producer.disconnect()
  await admin.disconnect()
  return out
}

// ListOffsets by timestamp over two batches, then a group set to the found offset reads from it.
scenarios['offsets-by-timestamp'] = async (kafka, { topic, group }) => {
  const admin = kafka.admin()
  await admin.connect()
  await createTopic(admin, topic, 1)
  const base = Date.now() - 60000
  const producer = kafka.producer()
  await producer.connect()
  for (const first of [0, 5]) {
    const messages = []
    for (let i = first; i < first + 5; i++) messages.push({ value: `t-${i}`, timestamp: String(base + i * 1000) })
    await producer.send({ topic, messages })
  }
  await producer.disconnect()
  const probes = { beforeAll: base - 1000, first: base, justAfterFirst: base + 1, between3and4: base + 3500, last: base + 9000, afterLast: base + 9001 }
  const answers = {}
  for (const [name, timestamp] of Object.entries(probes)) {
    const [found] = await admin.fetchTopicOffsetsByTimestamp(topic, timestamp)
    answers[name] = Number(found.offset)
  }
  await admin.setOffsets({ groupId: group, topic, partitions: [{ partition: 0, offset: String(answers.between3and4) }] })
  const consumed = await consumeAll(kafka, { topic, groupId: group, count: 10 - answers.between3and4 })
  const watermarks = await highWatermarks(admin, topic)
  await admin.disconnect()
  return { base, answers, consumed, watermarks }
}

// Over a SASL listener (`security` in the arguments): every connection logs in first. Admin
// creates the topic, a producer writes `count` records over two partitions, a group member reads
// them and commits explicitly, then two more records go to a new member of the same group, which
// must start at the commit and see only those.
scenarios['sasl-round-trip'] = async (kafka, { topic, group, count }) => {
  const admin = kafka.admin()
  await admin.connect()
  const out = {}
  out.created = await step(() => createTopic(admin, topic, 2))
  out.cluster = await step(async () => {
    const cluster = await admin.describeCluster()
    return cluster.brokers.map(b => ({ nodeId: b.nodeId, host: b.host, port: b.port }))
  })
  const producer = kafka.producer()
  await producer.connect()
  const messages = []
  for (let i = 0; i < count; i++) messages.push({ partition: i % 2, key: `k-${i}`, value: `sasl-${i}` })
  out.sent = await step(async () => {
    const result = await producer.send({ topic, acks: -1, messages })
    return result.map(r => ({ partition: r.partition, errorCode: r.errorCode, baseOffset: Number(r.baseOffset) }))
  })

  const consumer = kafka.consumer({ groupId: group, ...CONSUMER_TIMINGS })
  const records = []
  await consumer.connect()
  await consumer.subscribe({ topic, fromBeginning: true })
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => void records.push(toRecord(partition, message)),
  })
  await waitFor(() => records.length >= count)
  out.consumed = records.slice()
  // Commit what was read: the next offset to read, per partition (OffsetCommit).
  const next = {}
  for (const { partition, offset } of records) next[partition] = Math.max(next[partition] || 0, offset + 1)
  out.commit = await step(() =>
    consumer.commitOffsets(
      Object.entries(next).map(([partition, offset]) => ({ topic, partition: Number(partition), offset: String(offset) }))
    )
  )
  await consumer.disconnect()
  out.committed = await step(() => committedOffsets(admin, group, topic))

  await producer.send({ topic, messages: [{ partition: 0, value: 'after-0' }, { partition: 1, value: 'after-1' }] })
  await producer.disconnect()
  out.resumed = await consumeAll(kafka, { topic, groupId: group, count: 2 })
  await admin.disconnect()
  return out
}

// A login the broker refuses (wrong password or unknown user): what the admin client's and the
// producer's connect() throw, and how long each took (a non-retriable error fails at once).
scenarios['sasl-refused'] = async kafka => {
  const out = {}
  for (const [name, client] of [['admin', kafka.admin()], ['producer', kafka.producer()]]) {
    const started = Date.now()
    out[name] = await step(() => client.connect())
    out[`${name}Ms`] = Date.now() - started
    await client.disconnect()
  }
  return out
}

async function main() {
  const [name, bootstrap, argsJson] = process.argv.slice(2)
  const scenario = scenarios[name]
  if (!scenario || !bootstrap) {
    process.stderr.write(`usage: node scenarios.js {${Object.keys(scenarios).join('|')}} HOST:PORT '{...}'\n`)
    process.exit(2)
  }
  const args = JSON.parse(argsJson || '{}')
  const result = await scenario(makeKafka(bootstrap, `flowbus-test-${name}`, args.security), args)
  // Exit only once the output is written: stdout is an asynchronous pipe, and exiting
  // earlier cuts the JSON at the pipe's buffer size (64 KiB).
  await new Promise(resolve => process.stdout.write(`${JSON.stringify(result)}\n`, resolve))
}

main().then(
  () => process.exit(0),
  error => {
    process.stderr.write(`scenario failed: ${error.stack || error}\n`)
    process.exit(1)
  }
)
