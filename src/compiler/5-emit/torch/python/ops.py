"""The plan's ops in PyTorch: one function per op a compiled step can name.

Each function computes exactly what mcpc's reference kernel of the same name computes
(src/runtime/kernels/reference.ts); the differential test holds the two to 1e-4 step by step.

Conventions: a micro-batch has `rows` sequences of `seq_len` tokens, T = rows * seq_len, laid out
row-major; activations are [T, features]. Weights follow PyTorch: a linear weight is [out, in] and
y = x W^T + b; LoRA A is [r, in], B is [out, r]; routed experts stack them: A [E, r, in], B [E, out, r].
"""
import math

import torch
import torch.nn.functional as F


class BatchContext:
    """What the ops see of the micro-batch beyond their inputs: token positions and example segments.

    positions: the position of each token within its own example (packed examples restart at 0), [T].
    segments:  the example number within its row (1, 2, ...), 0 on padding, [T].
    The rotary tables and the attention mask are built once per micro-batch and cached here.
    """

    def __init__(self, rows, seq_len, positions, segments):
        self.rows = rows
        self.seq_len = seq_len
        self.positions = positions
        self.segments = segments
        self.cache = {}
        # Routed-token counts for conditional expert drops: None when nobody asked for them.
        self.routing = None

    def route(self, adapter, site, gates):
        """Counts, per expert, the real tokens (segment > 0) whose top-k kept it with a gate > 0."""
        if self.routing is None:
            return
        with torch.no_grad():
            chosen = (gates.detach() > 0) & (self.segments > 0).unsqueeze(1)
            counts = chosen.sum(0).to(torch.float64).cpu()
        key = (adapter, site)
        self.routing[key] = self.routing[key] + counts if key in self.routing else counts


# --- building blocks ------------------------------------------------------------------------------


def _xwT(x, w):
    return x @ w.t()


def _stack_rows(a):
    """A [E, r, in] stack of A matrices (or a [r, in] one) as [E*r, in] rows."""
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2]) if a.dim() == 3 else a


def _rope_tables(ctx, head_dim, theta):
    key = ("rope", head_dim, theta)
    if key not in ctx.cache:
        half = head_dim // 2
        # As the reference: the inverse frequency rounded to f32, the angle an f32 product, cos/sin of it.
        i = torch.arange(half, dtype=torch.float64)
        inv_freq = (1.0 / torch.pow(torch.tensor(float(theta), dtype=torch.float64), 2 * i / head_dim)).to(torch.float32)
        angle = ctx.positions.to(torch.float32).unsqueeze(1) * inv_freq.to(ctx.positions.device).unsqueeze(0)
        cos = torch.cos(angle.to(torch.float64)).to(torch.float32).unsqueeze(1)
        sin = torch.sin(angle.to(torch.float64)).to(torch.float32).unsqueeze(1)
        ctx.cache[key] = (cos, sin)
    return ctx.cache[key]


def _rotate(x, heads, head_dim, cos, sin):
    T = x.shape[0]
    half = head_dim // 2
    h = x.reshape(T, heads, head_dim)
    x1, x2 = h[..., :half], h[..., half:]
    y1 = x1 * cos.to(x.dtype) - x2 * sin.to(x.dtype)
    y2 = x2 * cos.to(x.dtype) + x1 * sin.to(x.dtype)
    return torch.cat([y1, y2], dim=2).reshape(T, heads * head_dim)


def _attention_mask(ctx, causal):
    """Additive mask [rows, 1, S, S]: 0 where query i may see key j (same segment; j <= i when causal), else -1e9."""
    key = ("mask", causal)
    if key not in ctx.cache:
        S = ctx.seq_len
        seg = ctx.segments.reshape(ctx.rows, S)
        allowed = seg.unsqueeze(2) == seg.unsqueeze(1)
        if causal:
            allowed = allowed & torch.ones(S, S, dtype=torch.bool, device=seg.device).tril().unsqueeze(0)
        zero = torch.zeros((), dtype=torch.float32, device=seg.device)
        ctx.cache[key] = torch.where(allowed, zero, zero - 1e9).unsqueeze(1)
    return ctx.cache[key]


def _to_heads(x, rows, S, heads, d):
    """[T, heads*d] -> [rows, heads, S, d]"""
    return x.reshape(rows, S, heads, d).permute(0, 2, 1, 3)


def _ortho_rows(parts, matrix):
    if matrix == "A":
        rows = [_stack_rows(p) for p in parts]
    elif matrix == "B":
        rows = [_stack_rows(p.transpose(1, 2)) if p.dim() == 3 else p.t() for p in parts]
    else:
        raise ValueError(f"unknown orthogonality matrix {matrix!r}")
    return rows[0] if len(rows) == 1 else torch.cat(rows, 0)


def _ortho_norm(m, norm):
    if norm == "l1":
        return m.abs().sum()  # d|x|/dx = sign(x): 0 at 0, as the reference
    if norm in ("l2", "fro"):
        return (m * m).sum()
    raise ValueError(f"unknown orthogonality norm {norm!r}")


# --- the ops --------------------------------------------------------------------------------------


def embedding(tokens, weight):
    return weight[tokens]


def rmsnorm(x, weight=None, *, eps):
    y = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)
    return y * weight if weight is not None else y


def rope(q, k, ctx, *, theta, head_dim, heads, kv_heads):
    """Rotate-half rotary embedding (Qwen2/Llama) at each token's position in its own example."""
    cos, sin = _rope_tables(ctx, head_dim, theta)
    return _rotate(q, heads, head_dim, cos, sin), _rotate(k, kv_heads, head_dim, cos, sin)


def attention(q, k, v, ctx, *, heads, kv_heads, head_dim, causal=True):
    """softmax(q k^T / sqrt(d) + mask) v per head; head h reads kv head h // (heads / kv_heads)."""
    rows, S, d = ctx.rows, ctx.seq_len, head_dim
    group = heads // kv_heads
    T = q.shape[0]
    if group > 1:
        k = k.reshape(T, kv_heads, 1, d).expand(T, kv_heads, group, d).reshape(T, heads * d)
        v = v.reshape(T, kv_heads, 1, d).expand(T, kv_heads, group, d).reshape(T, heads * d)
    qh, kh, vh = (_to_heads(t, rows, S, heads, d) for t in (q, k, v))
    scores = (qh @ kh.transpose(-1, -2)) * (1 / math.sqrt(d))
    p = torch.softmax(scores + _attention_mask(ctx, causal).to(scores.dtype), dim=-1)
    o = p @ vh
    return o.permute(0, 2, 1, 3).reshape(rows * S, heads * d)


def swiglu(gate, up):
    return gate * torch.sigmoid(gate) * up


def add(*xs):
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def lm_head_xent(x, weight, labels, mask):
    """Mean over the tokens in the loss mask of -log softmax(x W^T)[label] (labels already shifted)."""
    logits = _xwT(x, weight).float()
    logp = torch.log_softmax(logits, dim=-1)
    picked = logp.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    return -(picked * mask).sum() / torch.clamp(mask.sum(), min=1.0)


def linear(x, weight, bias=None):
    y = _xwT(x, weight)
    return y + bias if bias is not None else y


def lora_down(x, A):
    return _xwT(x, A)


def lora_up(h, B, *, scale):
    return _xwT(h, B) * scale


def router(x, W, b=None, *, activation="softmax"):
    logits = _xwT(x, W)
    if b is not None:
        logits = logits + b
    if activation == "softmax":
        return torch.softmax(logits, dim=-1)
    if activation == "sigmoid":
        return torch.sigmoid(logits)
    raise ValueError(f"unknown router activation {activation!r}")


def topk_gate(p, *, k, renormalize=True):
    """p kept on each token's top-k experts (the choice carries no gradient), renormalised over them."""
    E = p.shape[-1]
    kk = max(0, min(k, E))
    with torch.no_grad():
        mask = torch.zeros_like(p)
        if kk > 0:
            mask.scatter_(-1, torch.topk(p, kk, dim=-1).indices, 1.0)
    kept = p * mask
    return kept / kept.sum(-1, keepdim=True) if renormalize else kept


def expert_down(x, A, *, expert):
    return _xwT(x, A[expert])


def expert_up(h, B, *, expert, scale):
    return _xwT(h, B[expert]) * scale


def gate_combine(gates, *ys):
    out = gates[:, 0:1] * ys[0]
    for e in range(1, len(ys)):
        out = out + gates[:, e : e + 1] * ys[e]
    return out


def load_balance(p, gates, ctx, *, k):
    """Switch-Transformer auxiliary loss E * sum_e f_e P_e over the real tokens (segment > 0)."""
    E = p.shape[1]
    w = (ctx.segments > 0).to(p.dtype).unsqueeze(1)
    n = float(w.sum().item())
    chosen = (gates.detach() > 0).to(p.dtype)
    f = (chosen * w).sum(0) / max(1.0, n * k)
    P = (p * w).sum(0) / max(1.0, n)
    return (f * P).sum() * E


def ortho_penalty(*params, target_parts, matrix="A", norm="l1"):
    """norm(X_t X_o^T): X the rows of the target's (other's) A matrices stacked (B: the columns of B)."""
    target, other = params[:target_parts], params[target_parts:]
    return _ortho_norm(_ortho_rows(target, matrix) @ _ortho_rows(other, matrix).t(), norm)


def loss_sum(*terms, weights):
    out = None
    for x, w in zip(terms, weights):
        t = x if w == 1 else x * w
        out = t if out is None else out + t
    return out
