// The compression codecs KafkaJS does not ship (it has only gzip), built on pure-JS npm packages
// so `npm ci` never compiles anything: snappyjs (snappy), lz4js (LZ4 frames) and zstd-codec
// (zstd compiled to WebAssembly). KafkaJS looks a codec up by the batch attributes' low 3 bits
// and calls `compress(encoder)` / `decompress(buffer)`, both async.
'use strict'

const { CompressionTypes, CompressionCodecs } = require('kafkajs')
const snappy = require('snappyjs')
const lz4 = require('lz4js')
const { ZstdCodec } = require('zstd-codec')

// The Java client frames snappy the way xerial's snappy-java does: a 16-byte header, then
// blocks of [int32 length][raw snappy].
// librdkafka and kafka-python read both framed and raw snappy; we write framed, read both.
const XERIAL_MAGIC = Buffer.from([0x82, 0x53, 0x4e, 0x41, 0x50, 0x50, 0x59, 0x00]) // \x82SNAPPY\0
const XERIAL_HEADER_SIZE = 16
const XERIAL_BLOCK_SIZE = 32 * 1024

function xerialCompress(data) {
  const header = Buffer.alloc(XERIAL_HEADER_SIZE)
  XERIAL_MAGIC.copy(header, 0)
  header.writeInt32BE(1, 8) // version
  header.writeInt32BE(1, 12) // minimum compatible version
  const parts = [header]
  for (let start = 0; start < data.length; start += XERIAL_BLOCK_SIZE) {
    const block = Buffer.from(snappy.compress(data.subarray(start, start + XERIAL_BLOCK_SIZE)))
    const length = Buffer.alloc(4)
    length.writeInt32BE(block.length, 0)
    parts.push(length, block)
  }
  return Buffer.concat(parts)
}

function xerialDecompress(data) {
  const framed =
    data.length >= XERIAL_HEADER_SIZE && data.subarray(0, XERIAL_MAGIC.length).equals(XERIAL_MAGIC)
  if (!framed) {
    return Buffer.from(snappy.uncompress(data))
  }
  const parts = []
  let position = XERIAL_HEADER_SIZE
  while (position < data.length) {
    // Bounded: each pass moves `position` forward by at least the 4-byte length.
    const length = data.readInt32BE(position)
    if (length < 0 || position + 4 + length > data.length) {
      throw new Error(`corrupt xerial snappy block at byte ${position}`)
    }
    parts.push(Buffer.from(snappy.uncompress(data.subarray(position + 4, position + 4 + length))))
    position += 4 + length
  }
  return Buffer.concat(parts)
}

const SnappyCodec = {
  async compress(encoder) {
    return xerialCompress(encoder.buffer)
  },
  async decompress(buffer) {
    return xerialDecompress(buffer)
  },
}

const Lz4Codec = {
  async compress(encoder) {
    return Buffer.from(lz4.compress(encoder.buffer))
  },
  async decompress(buffer) {
    return Buffer.from(lz4.decompress(buffer))
  },
}

// zstd-codec initialises its WebAssembly module asynchronously, once.
let zstdReady = null
function zstd() {
  if (zstdReady === null) {
    zstdReady = new Promise(resolve => ZstdCodec.run(binding => resolve(binding)))
  }
  return zstdReady
}

const ZSTD_LEVEL = 3

const ZstdCodecForKafka = {
  async compress(encoder) {
    const binding = await zstd()
    return Buffer.from(new binding.Simple().compress(encoder.buffer, ZSTD_LEVEL))
  },
  async decompress(buffer) {
    // Streaming decompression: frames from streaming compressors (zstd-jni, librdkafka) may not
    // record the content size, which the one-shot API needs.
    const binding = await zstd()
    const out = new binding.Streaming().decompress(buffer)
    if (out === null) {
      throw new Error('corrupt zstd frame')
    }
    return Buffer.from(out)
  },
}

function register() {
  CompressionCodecs[CompressionTypes.Snappy] = () => SnappyCodec
  CompressionCodecs[CompressionTypes.LZ4] = () => Lz4Codec
  CompressionCodecs[CompressionTypes.ZSTD] = () => ZstdCodecForKafka
}

/** Codec name (as the tests spell it) -> KafkaJS compression type. */
const CODECS = {
  none: CompressionTypes.None,
  gzip: CompressionTypes.GZIP,
  snappy: CompressionTypes.Snappy,
  lz4: CompressionTypes.LZ4,
  zstd: CompressionTypes.ZSTD,
}

module.exports = { register, CODECS }
