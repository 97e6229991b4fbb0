"""Weights on disk, in the same formats as mcpc's TypeScript runtime (src/runtime/io, src/runtime/weights):

  - safetensors: read with the header validated before anything is allocated; written byte for byte as
    the reference writer lays files out (tensors sorted by dtype then name, header padded to 8 bytes);
  - Hugging Face checkpoints: config.json + model.safetensors (or a sharded index), by each parameter's
    `hfName`; saved with generation_config.json and config.json last;
  - `export peft`: one PEFT LoRA folder per adapter (adapter_model.safetensors, adapter_config.json as
    PEFT 0.18 writes it), mcpc's own layout (adapter.safetensors, adapter.json) for mixtures with live
    routed experts, and mcpc_export.json;
  - `export merged`: the base with every surviving LoRA merged in (W += s B A), as a Hugging Face checkpoint;
  - checkpoints: step-NNNNNN/ folders with a COMPLETE manifest (sha256 of every file) written last.
Every file is written atomically: a temporary file, fsync, rename.
"""
import hashlib
import json
import math
import os
import re
import shutil
import struct

import torch

MAX_HEADER_BYTES = 100 * 1000 * 1000

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4}
# The reference writer's order: by alignment, descending (U64, I64, F64, C64, F32, U32, I32, BF16, F16, ...).
DTYPE_RANK = {"I64": 14, "F64": 13, "F32": 11, "I32": 9, "BF16": 8, "F16": 7}
TORCH_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


class WeightsError(Exception):
    """A weights file that cannot be used: names the file (and the tensor)."""

    def __init__(self, file, problem, tensor=None):
        super().__init__(f"{file}: {tensor + ': ' if tensor else ''}{problem}")


# --- JSON as mcpc writes it (JSON.stringify(value, null, 2)) -------------------------------------


def js_number(x):
    """A number as JavaScript prints it: integers without '.0', exponents only below 1e-7 or from 1e21."""
    if isinstance(x, bool) or isinstance(x, int):
        return str(int(x))
    if not math.isfinite(x):
        return "null"
    if x == int(x) and abs(x) < 1e21:
        return str(int(x))
    r = repr(float(x))
    if "e" not in r:
        return r
    mant, exp = r.split("e")
    e = int(exp)
    if -7 < e < 21:
        digits = mant.replace("-", "").replace(".", "")
        sign = "-" if mant.startswith("-") else ""
        point = (mant.replace("-", "").index(".") if "." in mant else len(mant.replace("-", ""))) + e
        if point <= 0:
            return sign + "0." + "0" * (-point) + digits.rstrip("0")
        return sign + (digits + "0" * max(0, point - len(digits)))[:point] + ("." + digits[point:] if digits[point:] else "")
    return f"{mant}e{'+' if e > 0 else '-'}{abs(e)}"


def js_json(v, indent=2, level=0):
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return js_number(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        if not v:
            return "[]"
        return "[\n" + ",\n".join(inner + js_json(x, indent, level + 1) for x in v) + "\n" + pad + "]"
    if isinstance(v, dict):
        if not v:
            return "{}"
        return "{\n" + ",\n".join(inner + json.dumps(str(k), ensure_ascii=False) + ": " + js_json(x, indent, level + 1) for k, x in v.items()) + "\n" + pad + "}"
    raise TypeError(f"cannot write {type(v).__name__} as JSON")


# --- atomic files ---------------------------------------------------------------------------------


def write_atomic(path, chunks):
    """Writes bytes (or a list of byte chunks) to `path` atomically: temp file, fsync, rename, fsync folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for c in [chunks] if isinstance(chunks, (bytes, bytearray)) else chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, value):
    write_atomic(path, (js_json(value) + "\n").encode("utf-8"))


# --- safetensors ----------------------------------------------------------------------------------


def _tensor_bytes(t, dtype):
    t = t.detach().to("cpu").contiguous()
    if dtype == "BF16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
    return t.to(DTYPES[dtype]).numpy().tobytes()


def encode_safetensors(tensors, metadata=None, dtype="F32"):
    """[head, data...] chunks of a safetensors file of {name: tensor}, laid out as the reference writer does."""
    items = sorted(((n.encode("utf-8"), n, _tensor_bytes(t, dtype), list(t.shape)) for n, t in tensors.items()), key=lambda x: (-DTYPE_RANK[dtype], x[0]))
    parts = []
    if metadata is not None:
        meta = sorted(metadata.items(), key=lambda kv: kv[0].encode("utf-8"))
        parts.append('"__metadata__":{' + ",".join(f"{json.dumps(k, ensure_ascii=False)}:{json.dumps(v, ensure_ascii=False)}" for k, v in meta) + "}")
    offset = 0
    for _, name, data, shape in items:
        end = offset + len(data)
        parts.append(f'{json.dumps(name, ensure_ascii=False)}:{{"dtype":"{dtype}","shape":[{",".join(str(d) for d in shape)}],"data_offsets":[{offset},{end}]}}')
        offset = end
    header = ("{" + ",".join(parts) + "}").encode("utf-8")
    padded = (len(header) + 7) & ~7
    head = struct.pack("<Q", padded) + header + b" " * (padded - len(header))
    return [head] + [d for _, _, d, _ in items]


def save_safetensors(path, tensors, metadata=None, dtype="F32"):
    write_atomic(path, encode_safetensors(tensors, metadata, dtype))


def read_safetensors(path):
    """{name: float32 tensor} and the metadata; the header is checked before any tensor is read."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WeightsError(path, f"cannot open: {e.strerror}")
    with f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise WeightsError(path, f"is {size} bytes: too short for a safetensors file")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise WeightsError(path, f"header length {n} is over the limit or past the end of the file ({size} bytes)")
        try:
            header = json.loads(f.read(n).decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (ValueError, UnicodeDecodeError) as e:
            raise WeightsError(path, f"the header is not valid JSON: {e}")
        if not isinstance(header, dict):
            raise WeightsError(path, "the header is not a JSON object")
        metadata = header.pop("__metadata__", None)
        entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if isinstance(kv[1], dict) and "data_offsets" in kv[1] else -1)
        data_len, at = size - 8 - n, 0
        for name, e in entries:
            if not isinstance(e, dict) or e.get("dtype") not in SIZES or not isinstance(e.get("shape"), list) or not isinstance(e.get("data_offsets"), list):
                raise WeightsError(path, "needs dtype (F32, F16, BF16, F64, I32, I64), shape and data_offsets", name)
            b, end = e["data_offsets"]
            numel = math.prod(e["shape"])
            if b != at or end < b or end > data_len or end - b != numel * SIZES[e["dtype"]]:
                raise WeightsError(path, f"data_offsets [{b}, {end}] are not contiguous, in bounds and {numel} x {SIZES[e['dtype']]} bytes", name)
            at = end
        if at != data_len:
            raise WeightsError(path, f"{data_len - at} bytes after the last tensor")
        out = {}
        base = 8 + n
        for name, e in entries:
            b, end = e["data_offsets"]
            f.seek(base + b)
            raw = bytearray(f.read(end - b))
            if e["dtype"] == "BF16":
                t = torch.frombuffer(raw, dtype=torch.int16).view(torch.bfloat16) if raw else torch.empty(0, dtype=torch.bfloat16)
            else:
                t = torch.frombuffer(raw, dtype=DTYPES[e["dtype"]]) if raw else torch.empty(0, dtype=DTYPES[e["dtype"]])
            out[name] = t.reshape(e["shape"]).to(torch.float32).clone()
        return out, metadata


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate names in the header")
    if "__proto__" in keys:
        raise ValueError('the key "__proto__" is not allowed')
    return dict(pairs)


# --- Hugging Face checkpoints ---------------------------------------------------------------------


def hf_config(c, dtype="F32"):
    """config.json for the plan's model config (the same keys as src/plan/hf-config.ts)."""
    cfg = {
        "architectures": ["LlamaForCausalLM" if c["arch"] == "llama" else "Qwen2ForCausalLM"],
        "model_type": c["arch"],
        "vocab_size": c["vocab"],
        "hidden_size": c["hidden"],
        "intermediate_size": c["ffn"],
        "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kvHeads"],
        "head_dim": c["headDim"],
        "hidden_act": "silu",
        "max_position_embeddings": c["maxPositions"],
        "rms_norm_eps": c["rmsEps"],
        "rope_theta": c["ropeTheta"],
        "tie_word_embeddings": c["tied"],
    }
    if c["arch"] == "llama":
        cfg["attention_bias"] = c["qkvBias"]
    cfg["torch_dtype"] = TORCH_NAMES[dtype]
    return cfg


def load_hf_checkpoint(folder, params, config):
    """{plan id: tensor} of every base parameter with an hfName, from config.json + model.safetensors (or shards)."""
    cfg_file = os.path.join(folder, "config.json")
    try:
        with open(cfg_file, encoding="utf-8") as f:
            cfg = json.load(f)
    except OSError as e:
        raise WeightsError(cfg_file, f"cannot read: {e.strerror}")
    checks = [("model_type", cfg.get("model_type"), config["arch"]), ("hidden_size", cfg.get("hidden_size"), config["hidden"]),
              ("num_hidden_layers", cfg.get("num_hidden_layers"), config["layers"]), ("vocab_size", cfg.get("vocab_size"), config["vocab"]),
              ("intermediate_size", cfg.get("intermediate_size"), config["ffn"])]
    diffs = [f"{k}: config.json has {json.dumps(a)}, the plan was compiled with {json.dumps(b)}" for k, a, b in checks if a != b]
    if diffs:
        raise WeightsError(cfg_file, f"does not describe the model the plan was compiled for ({'; '.join(diffs)}): recompile the pipeline")
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(single):
        tensors, _ = read_safetensors(single)
        where = single
    elif os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        for s in shards:
            tensors.update(read_safetensors(os.path.join(folder, s))[0])
        where = index
    else:
        raise WeightsError(folder, "has neither model.safetensors nor model.safetensors.index.json: the model's weights are missing; train the pipeline that makes them first (for models/tiny-med-base: pipelines/pretrain.mcp), or point --root at a project that has them")
    out = {}
    for p in params:
        if p["owner"] != "base" or "hfName" not in p:
            continue
        t = tensors.get(p["hfName"])
        if t is None:
            raise WeightsError(where, f"the checkpoint has no such tensor, which the plan needs for {p['id']} {p['shape']}", p["hfName"])
        if list(t.shape) != p["shape"]:
            raise WeightsError(where, f"has shape {list(t.shape)}, the plan expects {p['shape']} for {p['id']}", p["hfName"])
        out[p["id"]] = t
    return out


# Files copied from beside an hf tokenizer's tokenizer.json, when present (and removed when stale).
HF_TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja"]


def save_hf_checkpoint(folder, plan, weights, tokenizer, root, dtype="F32"):
    """The base weights as a Hugging Face checkpoint; config.json is written last. The model source's own
    config.json and generation_config.json, when an hf() model has them, are kept (src/runtime/weights/hf.ts
    savedConfig, sourceModelFiles)."""
    src_cfg, src_gen = None, None
    source = plan["model"]["source"]
    if source["kind"] == "hf":
        src_dir = source["path"] if os.path.isabs(source["path"]) else os.path.join(root, source["path"])
        if os.path.exists(os.path.join(src_dir, "config.json")):
            with open(os.path.join(src_dir, "config.json"), encoding="utf-8") as f:
                src_cfg = json.load(f)
        if os.path.exists(os.path.join(src_dir, "generation_config.json")):
            with open(os.path.join(src_dir, "generation_config.json"), "rb") as f:
                src_gen = f.read()
    os.makedirs(folder, exist_ok=True)
    cfg = os.path.join(folder, "config.json")
    if os.path.exists(cfg):
        os.unlink(cfg)
    named = {p["hfName"]: weights[p["id"]] for p in plan["parameters"] if p["owner"] == "base" and "hfName" in p}
    save_safetensors(os.path.join(folder, "model.safetensors"), named, {"format": "pt"}, dtype)
    for f in os.listdir(folder):
        if f == "model.safetensors.index.json" or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", f):
            os.unlink(os.path.join(folder, f))
    # The tokenizer files (src/runtime/weights/hf.ts writeTokenizer): an hf tokenizer's copied from beside its
    # tokenizer.json, the byte tokenizer's written from the texts pipeline.py carries (the TypeScript runtime's
    # bytes); then those of an earlier save that this tokenizer does not have are removed.
    spec = plan["model"]["tokenizer"]
    written = []
    if spec["kind"] == "bytes":
        texts = plan.get("tokenizerFiles")
        if not texts:
            raise WeightsError("(plan)", "a byte-tokenizer model's merged export needs the tokenizer files pipeline.py carries (TOKENIZER_FILES); regenerate the program with mcpc compile --target torch")
        for name, text in texts.items():
            write_atomic(os.path.join(folder, name), text.encode("utf-8"))
            written.append(name)
    elif spec["kind"] == "hf":
        src = spec["path"] if os.path.isabs(spec["path"]) else os.path.join(root, spec["path"])
        src_file = src if src.endswith(".json") else os.path.join(src, "tokenizer.json")
        src_dir = os.path.dirname(src_file)
        if not os.path.exists(src_file):
            raise WeightsError(src_file, "the plan's tokenizer file does not exist")
        for name in HF_TOKENIZER_FILES:
            s = src_file if name == "tokenizer.json" else os.path.join(src_dir, name)
            if not os.path.exists(s):
                continue
            if os.path.abspath(s) != os.path.abspath(os.path.join(folder, name)):
                with open(s, "rb") as f:
                    write_atomic(os.path.join(folder, name), f.read())
            written.append(name)
    if written:
        for name in HF_TOKENIZER_FILES:
            if name not in written and os.path.exists(os.path.join(folder, name)):
                os.unlink(os.path.join(folder, name))
    if src_gen is not None:
        write_atomic(os.path.join(folder, "generation_config.json"), src_gen)
    elif tokenizer is not None:
        gen = {}
        if tokenizer.bos is not None:
            gen["bos_token_id"] = tokenizer.bos
        gen["eos_token_id"] = tokenizer.eos
        gen["pad_token_id"] = tokenizer.pad
        write_json(os.path.join(folder, "generation_config.json"), gen)
    own = hf_config(plan["model"]["config"], dtype)
    if src_cfg is not None:
        merged = dict(src_cfg)
        merged.update(own)
        if "dtype" in src_cfg:
            merged["dtype"] = own["torch_dtype"]
        own = merged
    write_json(cfg, own)


# --- merges ---------------------------------------------------------------------------------------


def merge_lora(W, A, B, scale):
    """W + scale * B A: B A summed in float64, W + scale * (B A) rounded to float32 once (as mcpc does)."""
    return (W.double() + scale * (B.double() @ A.double())).float()


def lora_views(plan, name):
    """Per site of adapter `name`: (site, base weight param, A param, B param) of its low-rank part."""
    by_site = {}
    for p in plan["parameters"]:
        if p["owner"] == name and "site" in p and p["role"] in ("lora_A", "lora_B"):
            by_site.setdefault(p["site"], {})[p["role"]] = p
    bases = {p["site"]: p for p in plan["parameters"] if p["owner"] == "base" and p["role"] == "weight" and "site" in p}
    adapter = next(a for a in plan["adapters"] if a["name"] == name)
    return [(site, bases[site], by_site[site]["lora_A"], by_site[site]["lora_B"]) for site in adapter["sites"] if site in by_site]


# --- end-of-pipeline states (src/runtime/weights/peft.ts) ------------------------------------------


def adapter_end_state(plan, name):
    last = plan["stages"][-1]
    low, routed = None, None
    for p in plan["parameters"]:
        if p["owner"] != name:
            continue
        st = p["states"].get(last["name"])
        if p["role"] in ("lora_A", "lora_B"):
            low = st if low is None else low
        else:
            routed = st if routed is None else routed
    for t in last["exit"]:
        if t["adapter"] != name:
            continue
        if t["op"] == "merge" and low is not None:
            low = "merged"
        elif t["op"] == "drop" and "condition" not in t:
            if t.get("part") != "experts" and low is not None:
                low = "dropped"
            if routed is not None:
                routed = "dropped"
        elif t["op"] == "freeze":
            low = "frozen" if low == "trainable" else low
            routed = "frozen" if routed == "trainable" else routed
    return low, routed


GONE = (None, "dropped", "absent")
ALIVE = ("trainable", "frozen", "folded")


def peft_exportable(plan, name):
    a = next(x for x in plan["adapters"] if x["name"] == name)
    low, routed = adapter_end_state(plan, name)
    if low in GONE:
        if a["type"] == "moe_lora" and a["shared"] == 0:
            return f"{name} is a mixture of routed experts (no shared experts): it is not a LoRA"
        return f"{name} is {low or 'absent'} at the end of the pipeline"
    if a["type"] == "moe_lora" and routed not in GONE:
        return f"{name} has live routed experts and a router: it is not a LoRA"
    return None


def live_adapters(plan):
    out = []
    for a in plan["adapters"]:
        low, routed = adapter_end_state(plan, a["name"])
        if low in ALIVE or routed in ALIVE:
            out.append(a["name"])
    return out


def merged_into_base(plan):
    return [a["name"] for a in plan["adapters"] if adapter_end_state(plan, a["name"])[0] == "merged"]


def base_trained_in(plan):
    """Stages that train base weights: adapters exported after them apply to the trained base."""
    return [s["name"] for s in plan["stages"] if any(p["owner"] == "base" and p["states"].get(s["name"]) == "trainable" for p in plan["parameters"])]


def peft_manifest(plan, entries):
    """mcpc_export.json of an `export peft` (the TypeScript runtime's exportPeft writes the same bytes)."""
    merged = merged_into_base(plan)
    parts = merged + [x for x in live_adapters(plan) if x not in merged]
    exported = [e["name"] for e in entries]
    not_exported = []
    for x in parts:
        if x in exported:
            continue
        reason = peft_exportable(plan, x)
        not_exported.append({"adapter": x, "reason": "not in this export's adapter list" if reason is None else
                             f"{reason}; `export safetensors {x} \"path\"` writes it in mcpc's layout, `export merged` cannot hold it either"})
    trained = base_trained_in(plan)
    one = len(merged) == 1
    note = (f"The base weights were trained in stage {', '.join(trained)}: these adapters apply to that trained base, which only `export merged` writes, not to the model source. " if trained else
            "The trained model is the model source with every adapter in apply_together applied at once; LoRA updates add up, so merging the folders one after another "
            "(PEFT: PeftModel.from_pretrained(model, folder).merge_and_unload()) gives the same weights. ")
    if merged:
        note += f"{', '.join(merged)} {'was' if one else 'were'} merged into the base during the pipeline; the adapters after {'it' if one else 'them'} were trained on top of {'it' if one else 'them'}. "
    if not_exported:
        note += f"Not in this export: {', '.join(n['adapter'] for n in not_exported)} (see not_exported); without {'it' if len(not_exported) == 1 else 'them'} the folders do not reproduce the trained model."
    for e in entries:
        if e["name"] in merged:
            e["merged_into_base"] = True
        e["apply_with"] = [x for x in parts if x != e["name"]]
    out = {"format": "mcpc-export", "version": 1, "pipeline": plan["pipeline"], "base": plan["model"]["source"]}
    if trained:
        out["base_trained_in"] = trained
    out.update({"merged_into_base": merged, "apply_together": [x for x in parts if x in exported], "not_exported": not_exported, "note": note.strip(), "adapters": entries})
    return out, not_exported


# --- PEFT -----------------------------------------------------------------------------------------


def peft_rank_alpha(a, rank):
    scale = a["alpha"] / math.sqrt(rank) if a["rslora"] else a["alpha"] / rank
    if rank == a["r"] and abs(scale - a["scale"]) <= 1e-12 * abs(a["scale"]):
        return rank, a["alpha"], a["rslora"]
    return rank, a["scale"] * rank, False


def peft_targets(modules, layers):
    layer_set, leaves, all_in_layers = set(), [], True
    for m in modules:
        x = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", m)
        if not x:
            all_in_layers = False
            break
        layer_set.add(int(x.group(1)))
        if x.group(2) not in leaves:
            leaves.append(x.group(2))
    mods = set(modules)
    short = [l.split(".")[-1] for l in leaves]
    rectangular = (all_in_layers and len(set(short)) == len(leaves) and len(mods) == len(layer_set) * len(leaves)
                   and all(f"model.layers.{l}.{leaf}" in mods for l in layer_set for leaf in leaves))
    if rectangular:
        order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        rank = lambda x: (order.index(x) + 1) if x in order else 99
        srt = sorted(short, key=lambda x: (rank(x), x))
        ls = sorted(layer_set)
        every = len(ls) == layers and all(l == i for i, l in enumerate(ls))
        return srt, None if every else ls, None if every else "layers"
    return "|".join(re.sub(r"([.*+?^${}()|\[\]\\])", r"\\\1", m) for m in sorted(mods)), None, None


def module_name(base_weight):
    return re.sub(r"\.weight$", "", base_weight["hfName"])


def peft_config(plan, name, views):
    a = next(x for x in plan["adapters"] if x["name"] == name)
    rank = views[0][2]["shape"][0]
    r, alpha, rs = peft_rank_alpha(a, rank)
    targets, layers_to_transform, pattern = peft_targets([module_name(v[1]) for v in views], plan["model"]["config"]["layers"])
    init_a = next((p["init"]["kind"] for p in plan["parameters"] if p["owner"] == name and p["role"] == "lora_A"), None)
    src = plan["model"]["source"]
    cfg = {
        "alora_invocation_tokens": None, "alpha_pattern": {}, "arrow_config": None, "auto_mapping": None,
        "base_model_name_or_path": src["path"] if src["kind"] == "hf" else None, "bias": "none", "corda_config": None,
        "ensure_weight_tying": False, "eva_config": None, "exclude_modules": None, "fan_in_fan_out": False,
        "inference_mode": True, "init_lora_weights": "gaussian" if init_a == "normal" else True, "layer_replication": None,
        "layers_pattern": pattern, "layers_to_transform": layers_to_transform, "loftq_config": {}, "lora_alpha": alpha,
        "lora_bias": False, "lora_dropout": a["dropout"], "megatron_config": None, "megatron_core": "megatron.core",
        "modules_to_save": None, "peft_type": "LORA", "peft_version": "0.18.0", "qalora_group_size": 16, "r": r,
        "rank_pattern": {}, "revision": None, "target_modules": targets, "target_parameters": None, "task_type": "CAUSAL_LM",
        "trainable_token_indices": None, "use_dora": False, "use_qalora": False, "use_rslora": rs,
    }
    return dict(sorted(cfg.items()))


def export_peft_adapter(plan, params, name, folder):
    views = lora_views(plan, name)
    os.makedirs(folder, exist_ok=True)
    cfg_file = os.path.join(folder, "adapter_config.json")
    if os.path.exists(cfg_file):
        os.unlink(cfg_file)  # the config is the folder's completion marker
    tensors = {}
    for site, w, A, B in views:
        m = module_name(w)
        tensors[f"base_model.model.{m}.lora_A.weight"] = params[A["id"]]
        tensors[f"base_model.model.{m}.lora_B.weight"] = params[B["id"]]
    save_safetensors(os.path.join(folder, "adapter_model.safetensors"), tensors, {"format": "pt"})
    write_json(cfg_file, peft_config(plan, name, views))
    a = next(x for x in plan["adapters"] if x["name"] == name)
    rank = views[0][2]["shape"][0]
    r, alpha, rs = peft_rank_alpha(a, rank)
    entry = {"peft": {"r": r, "lora_alpha": alpha, "use_rslora": rs}, "plan": {"r": a["r"], "alpha": a["alpha"], "scale": a["scale"]}}
    if rank != a["r"]:
        entry["rank_note"] = f"{name}: {js_number(rank / a['r'])} experts of rank {a['r']} are one LoRA of rank {rank}; PEFT's scale lora_alpha / r = {js_number(alpha)} / {rank} = {js_number(a['scale'])} equals the plan's"
    return entry


def import_peft_adapter(plan, name, folder):
    """{plan id: tensor} of adapter `name` from a PEFT LoRA folder (B rescaled when the folder's scale differs)."""
    a = next(x for x in plan["adapters"] if x["name"] == name)
    cfg_file = os.path.join(folder, "adapter_config.json")
    with open(cfg_file, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise WeightsError(cfg_file, f"peft_type is {json.dumps(cfg.get('peft_type'))}; only LoRA adapters can be imported")
    tensors, _ = read_safetensors(os.path.join(folder, "adapter_model.safetensors"))
    r, alpha = cfg["r"], cfg["lora_alpha"]
    s_peft = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    factor = s_peft / a["scale"]
    out = {}
    for site, w, A, B in lora_views(plan, name):
        m = module_name(w)
        for which, p in (("A", A), ("B", B)):
            t = tensors.get(f"base_model.model.{m}.lora_{which}.weight", tensors.get(f"base_model.model.{m}.lora_{which}.default.weight"))
            if t is None:
                raise WeightsError(os.path.join(folder, "adapter_model.safetensors"), f"the adapter has no LoRA {which} at {m}, which plan adapter {name} needs")
            if list(t.shape) != p["shape"]:
                raise WeightsError(os.path.join(folder, "adapter_model.safetensors"), f"has shape {list(t.shape)}, plan adapter {name} expects {p['shape']} at {site}")
            out[p["id"]] = t * factor if which == "B" and abs(factor - 1) > 1e-9 else t
    return out


# --- mcpc's adapter layout (mixtures) -------------------------------------------------------------


def _tensor_key(p):
    prefix = f"{p['owner']}.{p['site']}."
    return p["id"][len(prefix):] if "site" in p and p["id"].startswith(prefix) else p["role"]


def _forward_formula(a):
    if a["type"] == "lora":
        return "y = x W^T + scale * (x A^T) B^T"
    gate = "p = sigmoid(x router_W^T + router_b)" if a["router"] == "sigmoid" else "p = softmax(x router_W^T + router_b)"
    shared = " + scale * (x shared_A^T) shared_B^T" if a["shared"] > 0 else ""
    g = "p_e / (sum of p over the top_k)" if a["renormalize"] else "p_e"
    return f"y = x W^T{shared} + sum over e in topk(p, top_k) of g_e * scale * (x expert_A[e]^T) expert_B[e]^T; {gate}; g_e = {g}"


def export_adapter_file(plan, params, name, folder):
    a = next(x for x in plan["adapters"] if x["name"] == name)
    last = plan["stages"][-1]["name"]
    mine = [p for p in plan["parameters"] if p["owner"] == name]
    live = [p for p in mine if p["states"].get(last, "absent") not in ("dropped", "absent")]
    omitted = list(dict.fromkeys(f"{_tensor_key(p)} ({p['states'].get(last)})" for p in mine if p not in live))
    bases = {p["site"]: p for p in plan["parameters"] if p["owner"] == "base" and p["role"] == "weight" and "site" in p}
    sites = []
    for site in a["sites"]:
        w = bases.get(site)
        sites.append({"site": site, "module": module_name(w) if w else None, "in": w["shape"][1] if w else None, "out": w["shape"][0] if w else None,
                      "tensors": {_tensor_key(p): p["id"] for p in live if p.get("site") == site}})
    roles = {p["role"] for p in live}
    c = plan["model"]["config"]
    sidecar = {
        "format": "mcpc-adapter", "version": 1, "name": name, "type": a["type"], "r": a["r"], "alpha": a["alpha"], "scale": a["scale"],
        "rslora": a["rslora"], "dropout": a["dropout"], "experts": a["experts"], "top_k": a["topK"], "shared": a["shared"],
        "router": a["router"], "renormalize": a["renormalize"], "load_balance": a["loadBalance"], "router_noise": a["routerNoise"],
        "parts": {"low_rank": "lora_A" in roles, "routed": "expert_A" in roles}, "omitted": omitted, "forward": _forward_formula(a),
        "model": {"arch": c["arch"], "hidden": c["hidden"], "layers": c["layers"], "source": plan["model"]["source"]},
        "weights": "adapter.safetensors", "sites": sites,
    }
    os.makedirs(folder, exist_ok=True)
    side = os.path.join(folder, "adapter.json")
    if os.path.exists(side):
        os.unlink(side)
    save_safetensors(os.path.join(folder, "adapter.safetensors"), {p["id"]: params[p["id"]] for p in live}, {"format": "pt", "mcpc_adapter": name})
    write_json(side, sidecar)


# --- the plan's exports ---------------------------------------------------------------------------


def run_exports(plan, params, root, tokenizer, log, project_root=None):
    """Every `export` of the plan, paths relative to `root`, from the final parameters; inputs (the tokenizer's
    files) are read relative to `project_root` (default `root`)."""
    for e in plan["exports"]:
        path = e["path"] if os.path.isabs(e["path"]) else os.path.join(root, e["path"])
        if e["format"] == "peft":
            os.makedirs(path, exist_ok=True)
            entries = []
            for name in e["adapters"]:
                reason = peft_exportable(plan, name)
                a = next(x for x in plan["adapters"] if x["name"] == name)
                entry = {"name": name, "folder": name}
                if reason is None:
                    entry["layout"] = "peft"
                    entry.update(export_peft_adapter(plan, params, name, os.path.join(path, name)))
                elif a["type"] == "moe_lora":
                    entry["layout"] = "mcpc"
                    export_adapter_file(plan, params, name, os.path.join(path, name))
                    entry["reason"] = reason
                else:
                    raise WeightsError(os.path.join(path, name), f"cannot export adapter {name}: {reason}")
                entries.append(entry)
            manifest, gaps = peft_manifest(plan, entries)
            write_json(os.path.join(path, "mcpc_export.json"), manifest)
            log(f"exported peft -> {path} ({', '.join(e['name'] for e in entries)})")
            for n in gaps:
                log(f"warning: export peft {path}: {n['adapter']} is not in it: {n['reason']}")
            continue
        elif e["format"] == "safetensors":
            for name in e["adapters"]:
                export_adapter_file(plan, params, name, os.path.join(path, name))
            log(f"exported safetensors -> {path} ({', '.join(e['adapters'])})")
            continue
        elif e["format"] == "merged":
            weights = {p["id"]: params[p["id"]] for p in plan["parameters"] if p["owner"] == "base" and "hfName" in p}
            explicit = bool(e["adapters"])
            live = live_adapters(plan)
            done, gaps = [], []
            for name in e["adapters"] or [a["name"] for a in plan["adapters"]]:
                low, routed = adapter_end_state(plan, name)
                problem = "already merged" if low == "merged" else None if name in live else "gone"
                problem = problem or peft_exportable(plan, name)
                if problem:
                    if explicit and problem != "already merged":
                        raise WeightsError("(plan)", f"cannot merge adapter {name} into the base: {problem}")
                    if problem not in ("already merged", "gone"):
                        gaps.append((name, problem))
                    continue
                a = next(x for x in plan["adapters"] if x["name"] == name)
                for site, w, A, B in lora_views(plan, name):
                    weights[w["id"]] = merge_lora(weights[w["id"]], params[A["id"]], params[B["id"]], a["scale"])
                done.append(name)
            save_hf_checkpoint(path, plan, weights, tokenizer, project_root or root)
            log(f"exported merged -> {path}" + (f" (merged in: {', '.join(done)})" if done else ""))
            for name, problem in gaps:
                log(f"warning: export merged {path}: {name} is not in it: {problem}")


# --- checkpoints ----------------------------------------------------------------------------------


def write_checkpoint(root, step, files):
    """step-NNNNNN/ with `files` ({name: bytes}) and a COMPLETE manifest written last; atomic as a folder."""
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step-{step:06d}")
    staging = os.path.join(root, f".tmp-step-{step:06d}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    manifest = []
    for name in sorted(files):
        data = files[name]
        write_atomic(os.path.join(staging, name), data)
        blob = b"".join(data) if isinstance(data, list) else data
        manifest.append({"name": name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
    write_json(os.path.join(staging, "COMPLETE"), {"format": "mcpc-checkpoint", "version": 1, "step": step, "files": manifest})
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def latest_checkpoint(root):
    """The newest step-N folder whose COMPLETE manifest matches its files, or None."""
    if not os.path.isdir(root):
        return None
    for name in sorted((n for n in os.listdir(root) if re.fullmatch(r"step-\d{6,15}", n)), reverse=True):
        folder = os.path.join(root, name)
        try:
            with open(os.path.join(folder, "COMPLETE"), encoding="utf-8") as f:
                manifest = json.load(f)
            ok = True
            for e in manifest["files"]:
                with open(os.path.join(folder, e["name"]), "rb") as f:
                    if hashlib.sha256(f.read()).hexdigest() != e["sha256"]:
                        ok = False
            if ok:
                return folder
        except (OSError, ValueError, KeyError):
            continue
    return None
