// The .vfmig stream format (docs/stream-format.md): encoder, streaming decoder, offline verifier.
export {
  STREAM_MAGIC,
  STREAM_VERSION,
  PHASE_STOP_COPY,
  MAX_HEADER_JSON,
  DEFAULT_MAX_PAYLOAD,
  type StreamRecord,
  type StreamTotals,
} from './format';
export type { StreamHeader } from './header';
export { StreamError, type StreamErrorCode } from './errors';
export { FileSink, type StreamSink } from './sink';
export { StreamEncoder, type StreamEncoderOptions } from './encoder';
export type { StreamSource, StreamReader } from './reader';
export { StreamDecoder, type StreamDecoderOptions } from './decoder';
export { verifyStream, type VerifyOptions, type VerifyResult } from './verify';
