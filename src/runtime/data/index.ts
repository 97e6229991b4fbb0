/**
 * The data pipeline: JSONL and text sources to resumable, shuffled micro-batches.
 *
 *     records.ts   record layouts (chat, instruction) and their checks
 *     jsonl.ts     streaming JSONL reader with file:line errors (or counted warnings)
 *     template.ts  chat templates and which tokens are in the loss
 *     encode.ts    records and text to examples (tokens, shifted labels, loss mask), truncation
 *     shuffle.ts   the seeded per-epoch permutation
 *     batch.ts     micro-batch layout: padding or packing, segments and positions
 *     loader.ts    optimizer steps from a data cursor
 *     source.ts    a plan data entry to a dataset
 */

export { DataError } from './errors.js';
export { checkRecord, type ChatMessage, type ChatRecord, type RecordFormat, type Role } from './records.js';
export { readJsonl, parseJsonl, DEFAULT_MAX_LINE_BYTES, type JsonlOptions, type JsonlResult } from './jsonl.js';
export {
  BYTE_CHAT_TEMPLATE,
  CHATML_TEMPLATE,
  defaultChatTemplate,
  encodeChat,
  encodePrompt,
  endOfTurnId,
  renderChat,
  type ChatTemplate,
  type EncodedChat,
} from './template.js';
export { encodeRecord, encodeText, type Example, type EncodeOptions } from './encode.js';
export { epochOrder, epochSeed, Mulberry32 } from './shuffle.js';
export { collate, type MicroBatch } from './batch.js';
export { DataLoader, type BatchingOptions, type DataCursor, type EpochPlan, type Layout, type TrainStep } from './loader.js';
export { loadDataSource, concatDatasets, resolveInside, type Dataset, type DataSpec, type LoadDataOptions } from './source.js';
