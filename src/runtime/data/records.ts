/**
 * Records: what one JSONL line holds once checked, and the checks.
 *
 * Two layouts:
 * - `chat`: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...], ...}`. An optional
 *   system message first, then user and assistant turns alternating, starting with user and (for training)
 *   ending with assistant.
 * - `instruction` (Alpaca style): `{"instruction": "...", "input"?: "...", "output": "...", "system"?: "..."}`,
 *   turned into one user turn (instruction, then a blank line and the input when there is one) and one
 *   assistant turn.
 *
 * Keys the layout does not use are kept in `extra` (the MedCare files' `id`, `task`, `kind`, `answer`,
 * `expected`), never an error.
 */

export type Role = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: Role;
  content: string;
}

export interface ChatRecord {
  /** Where the record came from. */
  source: { file: string; line: number };
  messages: ChatMessage[];
  /** `id` of the line, when it has a string one. */
  id?: string;
  /** Every other key of the line (a null-prototype object). */
  extra: Record<string, unknown>;
}

export type RecordFormat = 'chat' | 'instruction';

export interface CheckOptions {
  /** Require the last message to be an assistant turn (training data). Default true. */
  requireResponse?: boolean;
}

/**
 * Checks one parsed JSON value against a layout. Returns the record, or a problem (a sentence without the
 * location) for the caller to wrap in a DataError.
 */
export function checkRecord(value: unknown, format: RecordFormat, source: { file: string; line: number }, opts: CheckOptions = {}): ChatRecord | string {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return `expected a JSON object, found ${describe(value)}`;
  }
  const obj = value as Record<string, unknown>;
  const messages = format === 'chat' ? checkMessages(obj, opts) : checkInstruction(obj);
  if (typeof messages === 'string') return messages;
  const used = format === 'chat' ? ['messages'] : ['instruction', 'input', 'output', 'system'];
  const extra: Record<string, unknown> = Object.create(null);
  for (const key of Object.keys(obj)) if (!used.includes(key)) extra[key] = obj[key];
  const rec: ChatRecord = { source, messages, extra };
  if (typeof obj.id === 'string') rec.id = obj.id;
  return rec;
}

function checkMessages(obj: Record<string, unknown>, opts: CheckOptions): ChatMessage[] | string {
  if (!Object.hasOwn(obj, 'messages')) {
    const hint = Object.hasOwn(obj, 'instruction') ? ' (this looks like an instruction record: declare the data with format: instruction)' : '';
    return `missing \`messages\`${hint}`;
  }
  const raw = obj.messages;
  if (!Array.isArray(raw)) return `\`messages\` must be an array of {role, content}, found ${describe(raw)}`;
  if (raw.length === 0) return '`messages` is empty';
  const out: ChatMessage[] = [];
  for (let i = 0; i < raw.length; i++) {
    const m = raw[i];
    const at = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) return `${at} must be an object {role, content}, found ${describe(m)}`;
    const { role, content } = m as Record<string, unknown>;
    if (role === undefined) return `${at} has no \`role\``;
    if (role !== 'system' && role !== 'user' && role !== 'assistant') {
      return `${at}.role is ${JSON.stringify(role)}; expected "system", "user" or "assistant"`;
    }
    if (content === undefined) return `${at} (${role}) has no \`content\``;
    if (typeof content !== 'string') return `${at}.content (${role}) must be a string, found ${describe(content)}`;
    if (content.trim() === '') return `${at}.content (${role}) is empty`;
    out.push({ role, content });
  }
  // Order: [system] user assistant user assistant ...
  let i = 0;
  if (out[0]!.role === 'system') i = 1;
  if (i === out.length) return '`messages` has only a system message; add a user and an assistant turn';
  for (let k = i; k < out.length; k++) {
    const expected: Role = (k - i) % 2 === 0 ? 'user' : 'assistant';
    if (out[k]!.role !== expected) {
      const where = out[k]!.role === 'system' ? ' (a system message may only come first)' : '';
      return `wrong role order: messages[${k}] is ${out[k]!.role}, expected ${expected}${where}; turns go [system,] user, assistant, user, assistant, ...`;
    }
  }
  if ((opts.requireResponse ?? true) && out[out.length - 1]!.role !== 'assistant') {
    return 'the last message must be an assistant turn (the response the model learns)';
  }
  return out;
}

function checkInstruction(obj: Record<string, unknown>): ChatMessage[] | string {
  const str = (key: string, required: boolean): string | undefined | { problem: string } => {
    if (!Object.hasOwn(obj, key) || obj[key] === null) return required ? { problem: `missing \`${key}\`` } : undefined;
    const v = obj[key];
    if (typeof v !== 'string') return { problem: `\`${key}\` must be a string, found ${describe(v)}` };
    if (required && v.trim() === '') return { problem: `\`${key}\` is empty` };
    return v;
  };
  if (Object.hasOwn(obj, 'messages') && !Object.hasOwn(obj, 'instruction')) {
    return 'missing `instruction` (this looks like a chat record: declare the data with format: chat)';
  }
  const parts = [str('instruction', true), str('output', true), str('input', false), str('system', false)];
  for (const p of parts) if (typeof p === 'object') return p.problem;
  const [instruction, output, input, system] = parts as (string | undefined)[];
  const msgs: ChatMessage[] = [];
  if (system !== undefined && system.trim() !== '') msgs.push({ role: 'system', content: system });
  msgs.push({ role: 'user', content: input !== undefined && input.trim() !== '' ? `${instruction}\n\n${input}` : instruction! });
  msgs.push({ role: 'assistant', content: output! });
  return msgs;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `a string ${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v)}`;
  if (typeof v === 'object') return 'an object';
  return `${typeof v === 'number' ? 'the number' : 'the ' + typeof v} ${String(v)}`;
}
