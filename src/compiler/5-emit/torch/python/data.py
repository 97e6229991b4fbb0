"""Training data: JSONL chat records (or text) to shuffled, batched micro-batches.

The same records, in the same order, with the same loss mask as mcpc's TypeScript runtime
(src/runtime/data/ and src/runtime/tokenizer/):
  - records: `chat` ({"messages": [...]}) or `instruction` ({"instruction", "input"?, "output", "system"?});
  - tokenizers: the byte tokenizer of built-in models (one id per UTF-8 byte, EOS 0x03, pad 0x00), or a
    Hugging Face tokenizer.json through the `tokenizers` package;
  - chat template: the byte template, or ChatML when the tokenizer has <|im_start|> and <|im_end|>; loss on
    assistant content and its end-of-turn token only (`loss: response`) or on every target (`loss: all`);
  - truncation to max_len: left while the last assistant turn fits, else from the last turn, cut right;
  - order: each epoch a Fisher-Yates permutation driven by mulberry32 seeded with a hash of (seed, epoch);
  - batching: `pad-longest` (one example per row, padded to the micro-batch's longest) or `pack`
    (greedy packing of whole examples into max_len rows; positions restart per example, segments 1, 2, ...).
"""
import json
import os

import torch


class DataError(Exception):
    """A data file or record that cannot be used: names the file and line."""

    def __init__(self, file, line, problem):
        super().__init__(f"{file}:{line}: {problem}" if line else f"{file}: {problem}")


# --- tokenizers -----------------------------------------------------------------------------------


class ByteTokenizer:
    kind = "bytes"
    vocab_size = 256
    eos = 0x03
    pad = 0x00
    bos = None
    special_ids = frozenset([0x03, 0x00])

    def encode(self, text):
        return list(text.encode("utf-8"))

    def token_id(self, token):
        if token in ("\u0003", "<eos>"):
            return self.eos
        if token in ("\u0000", "<pad>"):
            return self.pad
        return None

    def describe_special(self, i):
        return f"the control byte 0x{i:02x} ({'end of sequence' if i == self.eos else 'padding'})"


class HfTokenizer:
    kind = "hf"
    EOS_CANDIDATES = ["<|endoftext|>", "<|im_end|>", "</s>", "<eos>", "<|end_of_text|>"]

    def __init__(self, path):
        file = path if path.endswith(".json") else os.path.join(path, "tokenizer.json")
        try:
            from tokenizers import Tokenizer  # Hugging Face's tokenizers package
        except ImportError:
            raise DataError(file, 0, "the model uses a Hugging Face tokenizer: install the `tokenizers` package (pip install tokenizers)")
        if not os.path.exists(file):
            raise DataError(file, 0, "no such file (the plan's tokenizer path is relative to the project root)")
        self.impl = Tokenizer.from_file(file)
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
        cfg_file = os.path.join(os.path.dirname(file), "tokenizer_config.json")
        cfg = {}
        if os.path.exists(cfg_file):
            with open(cfg_file, encoding="utf-8") as f:
                cfg = json.load(f)
        self.added = {t["content"]: t["id"] for t in raw.get("added_tokens", []) if isinstance(t, dict)}
        special = {t["id"] for t in raw.get("added_tokens", []) if isinstance(t, dict) and t.get("special", True) is not False}

        def named(key):
            v = cfg.get(key)
            text = v if isinstance(v, str) else v.get("content") if isinstance(v, dict) else None
            if text is None:
                return None
            i = self.token_id(text)
            if i is None:
                raise DataError(cfg_file, 0, f"names {key} `{text}`, which is not in the vocabulary")
            return i

        eos = named("eos_token")
        if eos is None:
            eos = next((i for i in (self.token_id(t) for t in self.EOS_CANDIDATES) if i is not None), None)
        if eos is None:
            raise DataError(file, 0, "no end-of-sequence token: add `eos_token` to tokenizer_config.json")
        self.eos = eos
        pad = named("pad_token")
        self.pad = eos if pad is None else pad
        self.bos = named("bos_token")
        special |= {self.eos, self.pad} | ({self.bos} if self.bos is not None else set())
        self.special_ids = frozenset(special)

    def encode(self, text):
        return self.impl.encode(text, add_special_tokens=False).ids

    def token_id(self, token):
        if token in self.added:
            return self.added[token]
        return self.impl.token_to_id(token)

    def describe_special(self, i):
        return f"the special token {json.dumps(self.impl.decode([i], skip_special_tokens=False))} (id {i})"


def create_tokenizer(spec, root):
    if spec["kind"] == "bytes":
        return ByteTokenizer()
    if spec["kind"] == "hf":
        return HfTokenizer(spec["path"] if os.path.isabs(spec["path"]) else os.path.join(root, spec["path"]))
    raise DataError("(plan)", 0, "the plan names no tokenizer: give the model a tokenizer.json or use a built-in byte-level model")


# --- chat templates -------------------------------------------------------------------------------

BYTE_TEMPLATE = {
    "open": {"system": "<|system|>\n", "user": "<|user|>\n", "assistant": "<|assistant|>\n"},
    "close": {"system": "\n", "user": "\n"},
    "end": "eos",
    "after": "",
}
CHATML_TEMPLATE = {
    "open": {"system": "<|im_start|>system\n", "user": "<|im_start|>user\n", "assistant": "<|im_start|>assistant\n"},
    "close": {"system": "<|im_end|>\n", "user": "<|im_end|>\n"},
    "end": "<|im_end|>",
    "after": "\n",
}


def default_template(tok):
    if tok.kind == "hf" and tok.token_id("<|im_start|>") is not None and tok.token_id("<|im_end|>") is not None:
        return CHATML_TEMPLATE
    return BYTE_TEMPLATE


def encode_chat(tok, template, messages, loss_on):
    """ids, per-id loss flags, and where the last assistant turn starts; or a problem (a sentence)."""
    ids, loss, last_turn = [], [], -1
    end_id = tok.eos if template["end"] == "eos" else tok.token_id(template["end"])
    for i, m in enumerate(messages):
        content = tok.encode(m["content"])
        bad = next((x for x in content if x in tok.special_ids), None)
        if bad is not None:
            return f"messages[{i}].content ({m['role']}) contains {tok.describe_special(bad)}, which the tokenizer reserves; remove it from the text"
        if m["role"] == "assistant":
            last_turn = len(ids)
            parts = [(tok.encode(template["open"]["assistant"]), 0), (content, 1), ([end_id], 1), (tok.encode(template["after"]), 0)]
        else:
            parts = [(tok.encode(template["open"][m["role"]]), 0), (content, 0), (tok.encode(template["close"][m["role"]]), 0)]
        for part, flag in parts:
            ids.extend(part)
            loss.extend([flag] * len(part))
    if loss_on == "all":
        loss = loss[:1] + [1] * (len(loss) - 1)
    return ids, loss, last_turn


# --- records --------------------------------------------------------------------------------------


def _describe(v):
    if v is None:
        return "null"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, str):
        return "a string " + json.dumps(v[:40] + "..." if len(v) > 40 else v)
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, bool):
        return f"the boolean {str(v).lower()}"
    return f"the number {v}"


def check_record(obj, fmt):
    """The record's messages, or a problem (a sentence)."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, found {_describe(obj)}"
    if fmt == "instruction":
        if "messages" in obj and "instruction" not in obj:
            return "missing `instruction` (this looks like a chat record: declare the data with format: chat)"
        vals = {}
        for key, required in (("instruction", True), ("output", True), ("input", False), ("system", False)):
            v = obj.get(key)
            if v is None:
                if required:
                    return f"missing `{key}`"
                continue
            if not isinstance(v, str):
                return f"`{key}` must be a string, found {_describe(v)}"
            if required and v.strip() == "":
                return f"`{key}` is empty"
            vals[key] = v
        msgs = []
        if vals.get("system", "").strip():
            msgs.append({"role": "system", "content": vals["system"]})
        inp = vals.get("input", "")
        msgs.append({"role": "user", "content": f"{vals['instruction']}\n\n{inp}" if inp.strip() else vals["instruction"]})
        msgs.append({"role": "assistant", "content": vals["output"]})
        return msgs
    if "messages" not in obj:
        return "missing `messages`" + (" (this looks like an instruction record: declare the data with format: instruction)" if "instruction" in obj else "")
    raw = obj["messages"]
    if not isinstance(raw, list):
        return f"`messages` must be an array of {{role, content}}, found {_describe(raw)}"
    if not raw:
        return "`messages` is empty"
    out = []
    for i, m in enumerate(raw):
        at = f"messages[{i}]"
        if not isinstance(m, dict):
            return f"{at} must be an object {{role, content}}, found {_describe(m)}"
        role, content = m.get("role"), m.get("content")
        if "role" not in m:
            return f"{at} has no `role`"
        if role not in ("system", "user", "assistant"):
            return f'{at}.role is {json.dumps(role)}; expected "system", "user" or "assistant"'
        if "content" not in m:
            return f"{at} ({role}) has no `content`"
        if not isinstance(content, str):
            return f"{at}.content ({role}) must be a string, found {_describe(content)}"
        if content.strip() == "":
            return f"{at}.content ({role}) is empty"
        out.append({"role": role, "content": content})
    start = 1 if out[0]["role"] == "system" else 0
    if start == len(out):
        return "`messages` has only a system message; add a user and an assistant turn"
    for k in range(start, len(out)):
        expected = "user" if (k - start) % 2 == 0 else "assistant"
        if out[k]["role"] != expected:
            where = " (a system message may only come first)" if out[k]["role"] == "system" else ""
            return f"wrong role order: messages[{k}] is {out[k]['role']}, expected {expected}{where}; turns go [system,] user, assistant, user, assistant, ..."
    if out[-1]["role"] != "assistant":
        return "the last message must be an assistant turn (the response the model learns)"
    return out


class Example:
    __slots__ = ("tokens", "labels", "mask", "source", "truncated")

    def __init__(self, ids, loss, start, end, source, truncated=False):
        self.tokens = ids[start : end - 1]
        self.labels = ids[start + 1 : end]
        self.mask = loss[start + 1 : end]
        self.source = source
        self.truncated = truncated


def encode_record(tok, template, messages, max_len, loss_on, source):
    enc = encode_chat(tok, template, messages, loss_on)
    if isinstance(enc, str):
        raise DataError(source[0], source[1], enc)
    ids, loss, last_turn = enc
    span = max_len + 1
    start, end = 0, len(ids)
    if len(ids) > span:
        if last_turn >= 0 and len(ids) - last_turn <= span:
            start = len(ids) - span  # left truncation: the response stays whole
        else:
            start = max(0, last_turn)  # from the last turn, cut on the right
            end = start + span
    return Example(ids, loss, start, end, source, start > 0 or end < len(ids))


def load_data_source(spec, root, tok, max_len, loss_on, skip_bad_records=False):
    """The examples of one data entry of the plan (file order)."""
    file = spec["path"]
    path = file if os.path.isabs(file) else os.path.join(root, file)
    template = default_template(tok)
    examples = []
    if spec["kind"] == "text" or spec["format"] == "text":
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise DataError(file, 0, f"cannot read: {e.strerror} (paths are relative to the project root; see --root)")
        if text.startswith("\ufeff"):
            text = text[1:]
        ids = tok.encode(text)
        ones = [1] * len(ids)
        s = 0
        limit = spec.get("maxRecords")
        while s + 1 < len(ids) and (limit is None or len(examples) < limit):
            examples.append(Example(ids, ones, s, min(s + max_len + 1, len(ids)), (file, 0)))
            s += max_len
    else:
        fmt = spec["format"]
        limit = spec.get("maxRecords")
        try:
            f = open(path, "rb")
        except OSError as e:
            raise DataError(file, 0, f"cannot open: {e.strerror} (paths are relative to the project root; see --root)")
        with f:
            for n, raw in enumerate(f, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    problem = f"invalid UTF-8 at byte {e.start} of the line; save the file as UTF-8"
                    line = None
                if n == 1 and line is not None and line.startswith("\ufeff"):
                    line = line[1:]
                if line is not None:
                    if line.strip() == "":
                        continue
                    try:
                        msgs = check_record(json.loads(line), fmt)
                    except json.JSONDecodeError as e:
                        msgs = f"invalid JSON: {e.msg}"
                    problem = msgs if isinstance(msgs, str) else None
                if problem is None:
                    try:
                        examples.append(encode_record(tok, template, msgs, max_len, loss_on, (file, n)))
                        continue
                    except DataError as e:
                        if not skip_bad_records:
                            raise
                        continue
                if not skip_bad_records:
                    raise DataError(file, n, problem + " (or rerun with --skip-bad-records)")
    if not examples:
        raise DataError(file, 0, "no usable records")
    if not any(any(e.mask) for e in examples):
        # Training on it would take steps of loss 0 (src/runtime/data/source.ts says the same).
        cut = sum(1 for e in examples if e.truncated)
        raise DataError(file, 0, f"no example has a token in the loss at max_len {max_len}" +
                        (f" ({cut} of {len(examples)} were cut to fit, and what was kept of each is prompt or turn markers); raise the stage's max_len" if cut else
                         "" if loss_on == "all" else " (the records have no assistant response to learn)"))
    return examples


# --- order ----------------------------------------------------------------------------------------

M32 = 0xFFFFFFFF


def _imul(a, b):
    return (a * b) & M32


def _fmix32(h):
    h ^= h >> 16
    h = _imul(h, 0x85EBCA6B)
    h ^= h >> 13
    h = _imul(h, 0xC2B2AE35)
    h ^= h >> 16
    return h


class Mulberry32:
    def __init__(self, seed):
        self.state = seed & M32

    def next_u32(self):
        self.state = (self.state + 0x6D2B79F5) & M32
        t = self.state
        t = _imul(t ^ (t >> 15), t | 1)
        t ^= (t + _imul(t ^ (t >> 7), t | 61)) & M32
        return (t ^ (t >> 14)) & M32

    def below(self, n):
        if n <= 1:
            return 0
        limit = 0x100000000 - (0x100000000 % n)
        while True:
            x = self.next_u32()
            if x < limit:
                return x % n


def epoch_seed(seed, epoch):
    lo = seed & M32
    hi = (seed // 0x100000000) & M32
    return _fmix32(_fmix32(lo ^ 0x9E3779B9) ^ _imul(hi + 1, 0x85EBCA6B) ^ _fmix32((epoch + 0x632BE5AB) & M32))


def epoch_order(n, seed, epoch, shuffle=True):
    """The order of n records in `epoch`: a pure function of (n, seed, epoch)."""
    order = list(range(n))
    if not shuffle:
        return order
    rng = Mulberry32(epoch_seed(seed, epoch))
    for i in range(n - 1, 0, -1):
        j = rng.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


# --- batches --------------------------------------------------------------------------------------


class MicroBatch:
    """rows x seq_len arrays, row-major: tokens, labels, mask, positions, segments (torch tensors)."""

    def __init__(self, examples, rows_of_examples, rows, seq_len, pad_id):
        size = rows * seq_len
        tokens = [pad_id] * size
        labels = [pad_id] * size
        mask = [0.0] * size
        positions = [0] * size
        segments = [0] * size
        for r, row in enumerate(rows_of_examples):
            at = r * seq_len
            for seg, idx in enumerate(row, start=1):
                ex = examples[idx]
                n = len(ex.tokens)
                tokens[at : at + n] = ex.tokens
                labels[at : at + n] = ex.labels
                mask[at : at + n] = [float(m) for m in ex.mask]
                positions[at : at + n] = range(n)
                segments[at : at + n] = [seg] * n
                at += n
        self.rows, self.seq_len = rows, seq_len
        self.tokens = torch.tensor(tokens, dtype=torch.int64)
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.mask = torch.tensor(mask, dtype=torch.float32)
        self.positions = torch.tensor(positions, dtype=torch.int64)
        self.segments = torch.tensor(segments, dtype=torch.int64)
        self.loss_tokens = sum(mask)


class DataLoader:
    """Examples to optimizer steps; a step is `accumulation` micro-batches of `micro_batch` rows.

    The last partial batch of an epoch is dropped. The cursor {epoch, index} (records of the epoch's
    order consumed) is what a checkpoint saves.
    """

    def __init__(self, examples, micro_batch, accumulation, max_len, layout, seed, shuffle, pad_id):
        self.examples = examples
        self.micro_batch, self.accumulation, self.max_len = micro_batch, accumulation, max_len
        self.layout, self.seed, self.shuffle, self.pad_id = layout, seed, shuffle, pad_id
        self._cached = None
        for i, ex in enumerate(examples):
            if not 1 <= len(ex.tokens) <= max_len:
                raise DataError(ex.source[0], ex.source[1], f"example {i} has {len(ex.tokens)} tokens; expected 1..{max_len}")

    def plan(self, epoch):
        if self._cached and self._cached[0] == epoch:
            return self._cached[1], self._cached[2]
        order = epoch_order(len(self.examples), self.seed, epoch, self.shuffle)
        steps = self._plan_packed(order) if self.layout == "pack" else self._plan_padded(order)
        self._cached = (epoch, order, steps)
        return order, steps

    def total_steps(self, epochs):
        return sum(len(self.plan(e)[1]) for e in range(epochs))

    def steps(self, cursor=(0, 0), epochs=float("inf")):
        """Yields (micro_batches, next_cursor) from `cursor` to the end of epoch `epochs - 1`."""
        epoch, index = cursor
        while epoch < epochs:
            order, steps = self.plan(epoch)
            if not steps:
                raise DataError("(data)", 0, f"epoch {epoch} has no complete step: {len(self.examples)} examples do not fill one step (micro_batch {self.micro_batch} x accumulation {self.accumulation}); lower the batch")
            starts = [s[0] for s in steps]
            first = 0 if index == 0 else (starts.index(index) if index in starts else len(steps))
            for s in range(first, len(steps)):
                start, end, micro = steps[s]
                batches = []
                for rows in micro:
                    row_ids = [order[a:b] for a, b in rows]
                    seq_len = self.max_len
                    if self.layout == "pad-longest":
                        seq_len = max([1] + [len(self.examples[i].tokens) for row in row_ids for i in row])
                    batches.append(MicroBatch(self.examples, row_ids, self.micro_batch, seq_len, self.pad_id))
                nxt = (epoch, end) if s + 1 < len(steps) else (epoch + 1, 0)
                yield batches, nxt
            epoch, index = epoch + 1, 0

    def _plan_padded(self, order):
        n, mb = len(order), self.micro_batch
        batch = mb * self.accumulation
        steps = []
        for s in range(n // batch):
            start, end = s * batch, (s + 1) * batch
            micro = [[(r, r + 1) for r in range(m, min(m + mb, end))] for m in range(start, end, mb)]
            steps.append((start, end, micro))
        return steps

    def _plan_packed(self, order):
        n = len(order)
        length = lambda k: len(self.examples[order[k]].tokens)
        steps, k = [], 0
        while k < n:
            start, micro, complete = k, [], True
            for _ in range(self.accumulation):
                if k >= n:
                    break
                rows, row_start, used = [], k, 0
                while k < n:
                    l = length(k)
                    if used + l <= self.max_len:
                        used += l
                        k += 1
                    elif len(rows) + 1 < self.micro_batch:
                        rows.append((row_start, k))
                        row_start, used = k, 0
                    else:
                        break
                if k > row_start:
                    rows.append((row_start, k))
                micro.append(rows)
                if len(rows) < self.micro_batch:
                    complete = False
            if len(micro) < self.accumulation:
                complete = False
            if not complete:
                break
            steps.append((start, k, micro))
        return steps
