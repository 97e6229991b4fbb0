/**
 * Checkers for a stage and its statements: settings, train, constrain, eval and the then-block. Stages are
 * checked in pipeline order; the context's adapter statuses move forward as each then-block applies.
 */
import type * as A from '../1-parse/ast.js';
import type { Note } from '../diagnostics/diagnostic.js';
import type { Span } from '../source.js';
import { didYouMean } from '../util/suggest.js';
import type { AdapterStatus, CheckedConstraint, CheckedStage, CheckedTransition, StageSettings } from './checked.js';
import { article, kindNames, type Ctx } from './context.js';
import { settingNames, settings as settingSpecs } from './schema.js';
import { describeExpr, type CtorValue, type Warmup } from './values.js';

export function checkStage(ctx: Ctx, s: A.Stage): CheckedStage {
  // No prototype: an adapter may be called `__proto__`.
  const entry: Record<string, AdapterStatus> = Object.create(null);
  for (const [name, st] of ctx.status) entry[name] = st.status;

  const settings = checkSettings(ctx, s);
  const stage: CheckedStage = { name: s.name.name, trainBase: false, train: [], data: [], settings, constraints: [], evals: [], transitions: [], entry, span: s.span };

  const trains = s.items.filter((i): i is A.Train => i.kind === 'train');
  trains.slice(1).forEach((t) =>
    ctx.diags.report('invalid_statement', t.span, 'a stage has one `train` statement', { hint: 'list every adapter in one statement: `train a, b on data`', notes: [{ message: 'first train statement', span: trains[0].span }] }),
  );
  // The extra statements are still read, so their adapters do not also show up as never trained.
  for (const t of trains) checkTrain(ctx, t, stage);
  if (!trains.length) ctx.diags.report('stage_trains_nothing', s.name.span, `stage \`${s.name.name}\` trains nothing`);

  for (const item of s.items) {
    if (item.kind === 'constrain') {
      const c = checkConstrain(ctx, item, stage);
      if (c) stage.constraints.push(c);
    } else if (item.kind === 'eval') checkEval(ctx, item, stage);
    else if (item.kind === 'decl' && item.declKind !== 'adapter') {
      ctx.diags.report('invalid_statement', item.span, `a ${item.declKind} cannot be declared inside a stage`, { hint: 'move it to the top level; stages may declare adapters only' });
    }
  }

  // Training happens, then the transitions apply in order.
  for (const name of stage.train) {
    const st = ctx.status.get(name);
    if (st && st.status === 'pending') st.status = 'trainable';
  }
  for (const item of s.items) if (item.kind === 'then') for (const t of item.transitions) checkTransition(ctx, t, stage);
  return stage;
}

// --- settings ------------------------------------------------------------------------------------------------

/** What other trainers (Hugging Face Trainer, PEFT, LLaMA-Factory) call the settings. */
const settingAliases: Record<string, string> = {
  learning_rate: 'lr',
  num_train_epochs: 'epochs',
  num_epochs: 'epochs',
  max_steps: 'steps',
  lr_scheduler_type: 'schedule',
  scheduler: 'schedule',
  warmup_ratio: 'warmup',
  warmup_steps: 'warmup',
  batch_size: 'batch',
  per_device_train_batch_size: 'micro_batch',
  micro_batch_size: 'micro_batch',
  max_seq_length: 'max_len',
  max_length: 'max_len',
  cutoff_len: 'max_len',
  max_grad_norm: 'grad_clip',
  optim: 'optimizer',
  save_steps: 'checkpoint_every',
  gradient_checkpointing: 'recompute',
  bf16: 'precision',
  fp16: 'precision',
};

function checkSettings(ctx: Ctx, s: A.Stage): StageSettings {
  const seen = new Map<string, A.Setting>();
  const v: Record<string, unknown> = {};
  const spans: Record<string, A.Setting> = {};
  for (const item of s.items) {
    if (item.kind !== 'setting' || item.name.name === '') continue;
    const name = item.name.name;
    const spec = settingSpecs.find((x) => x.name === name);
    if (!spec) {
      const alias = settingAliases[name];
      ctx.diags.report('unknown_hyperparameter', item.name.span, `\`${name}\` is not a stage setting`, {
        hint: alias ? `mcpc calls it \`${alias}\`` : didYouMean(name, settingNames) ?? `settings: ${settingNames.join(', ')}`,
      });
      continue;
    }
    const prev = seen.get(name);
    if (prev) {
      ctx.diags.report('duplicate_setting', item.name.span, `\`${name}\` is set twice in stage \`${s.name.name}\``, { notes: [{ message: 'first set here', span: prev.name.span }] });
      continue;
    }
    seen.set(name, item);
    if (!item.value) continue;
    // lr gets its own rule (lr_out_of_range) instead of a generic type error.
    if (name === 'lr') {
      if (item.value.kind !== 'number') ctx.diags.report('invalid_value', item.value.span, `\`lr\` must be a number, found ${describeExpr(item.value)}`, { hint: 'a learning rate is a plain number, e.g. `lr 2e-4`' });
      else if (!(item.value.value > 0 && item.value.value <= 1)) {
        ctx.diags.report('lr_out_of_range', item.value.span, `learning rate ${item.value.text} is outside (0, 1]`, { hint: 'LoRA stages typically use 1e-5 to 1e-3 (MedCare: 2e-4)' });
      } else v.lr = item.value.value;
      spans.lr = item;
      continue;
    }
    const val = ctx.ev.value(item.value, spec.type, `\`${name}\``);
    if (val !== undefined) {
      v[name] = val;
      spans[name] = item;
    }
  }

  const def = (n: string) => settingSpecs.find((x) => x.name === n)!.default;
  const sched = (v.schedule as CtorValue | undefined) ?? { ctor: 'cosine', args: { warmup: { percent: 3 }, min_lr: 0 }, spans: {}, span: s.span };
  // A schedule's own default warmup is the number 0, and a rejected warmup leaves none: both mean no warmup.
  const w = sched.args.warmup as Warmup | number | undefined;
  let warmup: Warmup = typeof w === 'number' ? { steps: w } : (w ?? { steps: 0 });
  let warmupSpan = sched.spans.warmup;
  if (v.warmup !== undefined) {
    if (sched.spans.warmup) {
      ctx.diags.report('stage_setting_conflict', spans.warmup.span, 'warmup is set both here and in the schedule', {
        notes: [{ message: 'schedule warmup', span: sched.spans.warmup }],
        hint: 'keep one: the schedule\'s `warmup:` argument or the `warmup` setting',
      });
    }
    warmup = v.warmup as Warmup;
    warmupSpan = spans.warmup.value!.span;
  }
  const steps = v.steps as number | undefined;
  if ('percent' in warmup && warmup.percent > 100 && warmupSpan) {
    ctx.diags.report('warmup_out_of_range', warmupSpan, `warmup ${warmup.percent}% is more than the whole stage`, { hint: 'warmup is usually 1-10% of the stage (MedCare: 3%)' });
  } else if ('steps' in warmup && steps !== undefined && warmup.steps > steps && warmupSpan) {
    ctx.diags.report('warmup_out_of_range', warmupSpan, `warmup of ${warmup.steps} steps is longer than the stage (${steps} steps)`, {
      hint: 'a bare number is a count of steps; a share of the stage is written as a percentage, e.g. `3%`',
    });
  }

  const opt = (v.optimizer as CtorValue | undefined)?.args ?? { beta1: 0.9, beta2: 0.999, eps: 1e-8 };
  const optKind = (v.optimizer as CtorValue | undefined)?.ctor ?? 'adamw';
  const batch = (v.batch as number | undefined) ?? (def('batch') as number);
  const micro = (v.micro_batch as number | undefined) ?? batch;
  if (v.micro_batch !== undefined && (micro > batch || batch % micro !== 0)) {
    ctx.diags.report('batch_not_divisible', spans.micro_batch.value!.span, `batch ${batch} is not a whole number of micro-batches of ${micro}`, {
      hint: `pick a micro_batch that divides ${batch}`,
      ...(spans.batch ? { notes: [{ message: 'batch set here', span: spans.batch.span }] } : {}),
    });
  }
  const maxLen = (v.max_len as number | undefined) ?? (def('max_len') as number);
  const maxPos = ctx.model?.config?.maxPositions;
  if (spans.max_len && maxPos !== undefined && maxLen > maxPos) {
    ctx.diags.report('invalid_value', spans.max_len.value!.span, `max_len ${maxLen} exceeds the model's ${maxPos} positions`, { hint: `use max_len ${maxPos} or less (the model's max_position_embeddings); longer examples are truncated to fit` });
  }
  const get = <T>(n: string): T => (v[n] ?? def(n)) as T;
  return {
    epochs: get('epochs'),
    ...(steps !== undefined ? { steps } : {}),
    lr: (v.lr as number | undefined) ?? (def('lr') as number),
    schedule: { kind: sched.ctor as 'cosine', warmup, minLr: (sched.args.min_lr as number | undefined) ?? 0 },
    batch,
    microBatch: micro,
    maxLen,
    weightDecay: get('weight_decay'),
    optimizer: optKind === 'sgd' ? { kind: 'sgd', momentum: opt.momentum as number } : { kind: 'adamw', beta1: opt.beta1 as number, beta2: opt.beta2 as number, eps: opt.eps as number },
    gradClip: get('grad_clip'),
    seed: get('seed'),
    precision: get('precision'),
    ...(v.memory !== undefined ? { memoryBytes: v.memory as number } : {}),
    checkpointEvery: get('checkpoint_every'),
    packing: get('packing'),
    loss: get('loss'),
    recompute: get('recompute'),
    maxBadSteps: get('max_bad_steps'),
    shuffle: get('shuffle'),
  };
}

// --- train -----------------------------------------------------------------------------------------------------

function checkTrain(ctx: Ctx, t: A.Train, stage: CheckedStage): void {
  for (const id of t.targets) {
    if (ctx.model && id.name === ctx.model.name) {
      stage.trainBase = true;
      continue;
    }
    const info = ctx.lookup(id, ['adapter', 'model'], 'adapter');
    if (!info) continue;
    const name = id.name;
    if (!ctx.checkAlive(id, name, 'trained')) continue;
    const st = ctx.status.get(name);
    if (st?.status === 'frozen') {
      ctx.diags.report('train_frozen_adapter', id.span, `adapter \`${name}\` is frozen and cannot be trained`, { notes: st.span ? [{ message: 'frozen here', span: st.span }] : [] });
      continue;
    }
    if (stage.train.includes(name)) {
      ctx.diags.report('duplicate_argument', id.span, `\`${name}\` is listed twice`, { hint: 'list it once' });
      continue;
    }
    stage.train.push(name);
    ctx.trained.add(name);
  }
  if (!t.data.length && t.targets.length) {
    ctx.diags.report('missing_argument', t.span, '`train` needs the data to train on', { hint: `write \`train ${t.targets.map((x) => x.name).join(', ')} on DATA\`` });
  }
  for (const id of t.data) {
    const info = ctx.lookup(id, ['data'], 'data source');
    if (!info) continue;
    ctx.used.add(id.name);
    if (!stage.data.includes(id.name)) stage.data.push(id.name);
  }
}

// --- constrain -------------------------------------------------------------------------------------------------

function flattenArgs(args: A.Arg[]): A.Expr[] {
  return args.flatMap((a) => (a.value.kind === 'list' ? a.value.items : [a.value]));
}

function checkConstrain(ctx: Ctx, c: A.Constrain, stage: CheckedStage): CheckedConstraint | undefined {
  if (!c.call) return undefined;
  if (c.call.callee.name !== 'orthogonal') {
    if (c.call.callee.name) {
      ctx.diags.report('unknown_constructor', c.call.callee.span, `\`${c.call.callee.name}\` is not a constraint`, { hint: didYouMean(c.call.callee.name, ['orthogonal']) ?? 'constraints: orthogonal(a.A, b.A, ...)' });
    }
    return undefined;
  }
  for (const a of c.call.args) if (a.name) ctx.diags.report('unknown_argument', a.name.span, '`orthogonal` takes adapters, not named arguments', { hint: 'write weight and norm after the call: `orthogonal(a.A, b.A) weight 1.0 norm l1`' });

  const refs: { name: string; part?: string; expr: A.Expr }[] = [];
  const written = flattenArgs(c.call.args.filter((a) => !a.name));
  for (const e of written) {
    if (e.kind !== 'ref' || e.path.length > 2) {
      ctx.diags.report('invalid_value', e.span, `orthogonal() takes adapter references such as \`align.A\`, found ${describeExpr(e)}`, { hint: 'write `constrain orthogonal(align.A, knowledge.A)`: the adapter the penalty moves first' });
      continue;
    }
    const part = e.path[1]?.name;
    if (part !== undefined && part !== 'A' && part !== 'B') {
      ctx.diags.report('invalid_reference', e.path[1].span, `\`${e.path[0].name}.${part}\`: orthogonality compares an adapter's \`A\` (input subspace) or \`B\` (output subspace)`, { hint: didYouMean(part, ['A', 'B']) });
      continue;
    }
    refs.push({ name: e.path[0].name, part, expr: e });
  }
  const parts = new Set(refs.map((r) => r.part ?? 'A'));
  if (parts.size > 1) ctx.diags.report('invalid_value', c.call.span, 'mix of `.A` and `.B`: compare the same matrix of every adapter', { hint: 'use `.A` everywhere (the input subspaces, as MedCare does) or `.B` everywhere' });
  if (refs.length < 2) {
    // Arguments that were written but rejected above are reported already.
    if (written.length >= 2) return undefined;
    ctx.diags.report('missing_argument', c.call.span, 'orthogonal() needs the trained adapter and at least one other', { hint: 'e.g. `orthogonal(align.A, knowledge.A)`' });
    return undefined;
  }

  let ok = true;
  const adapters = refs.map((r) => {
    const id = (r.expr as A.RefExpr).path[0];
    const info = ctx.lookup(id, ['adapter'], 'adapter');
    if (!info) return (ok = false), undefined;
    ctx.used.add(r.name);
    if (!ctx.checkAlive(r.expr as A.RefExpr, r.name, 'constrained')) return (ok = false), undefined;
    return ctx.adapters.get(r.name);
  });
  if (!ok) return undefined;
  const [target, ...others] = adapters;
  if (!target || others.some((o) => !o)) return undefined;

  let weight = 1;
  if (c.weight) {
    const w = ctx.ev.value(c.weight, { t: 'number', min: 0 }, 'constraint weight');
    if (typeof w === 'number') weight = w;
  }
  let norm: CheckedConstraint['norm'] = 'l1';
  if (c.norm && c.norm.name) {
    if (c.norm.name === 'l1' || c.norm.name === 'l2' || c.norm.name === 'fro') norm = c.norm.name;
    else ctx.diags.report('invalid_value', c.norm.span, `norm \`${c.norm.name}\` is not one of l1, l2, fro`, { hint: didYouMean(c.norm.name, ['l1', 'l2', 'fro']) });
  }

  if (!stage.train.includes(target.name)) {
    const trained = others.find((o) => stage.train.includes(o!.name));
    ctx.diags.report('constraint_on_frozen', (refs[0].expr as A.RefExpr).span, `\`${target.name}\` is not trained in stage \`${stage.name}\`, so this penalty moves nothing`, {
      ...(trained ? { hint: `the first argument is the adapter the penalty moves: put \`${trained.name}\` first` } : {}),
    });
  }

  const targetSites = new Set(target.sites.map((s) => s.path));
  const common = new Set<string>();
  others.forEach((o, i) => {
    if (!target.sites.length || !o!.sites.length) return; // placement errors were reported already
    const shared = o!.sites.filter((s) => targetSites.has(s.path));
    if (!shared.length) {
      const notes: Note[] = [
        { message: `\`${target.name}\` is placed at ${target.placement}`, span: placementSpan(ctx, target.name) ?? target.span },
        { message: `\`${o!.name}\` is placed at ${o!.placement}`, span: placementSpan(ctx, o!.name) ?? o!.span },
      ];
      ctx.diags.report('orthogonal_no_common_site', refs[i + 1].expr.span, `\`${target.name}\` and \`${o!.name}\` share no module, so their orthogonality penalty is empty`, { notes });
    }
    for (const s of shared) common.add(s.path);
  });

  // At each common site, the rows of all the A's involved must fit in the input dimension.
  const matrix = (parts.values().next().value ?? 'A') as 'A' | 'B';
  const targetSite = new Map(target.sites.map((s) => [s.path, s]));
  const sitesOf = new Map([target, ...others].map((a) => [a!, new Set(a!.sites.map((s) => s.path))]));
  for (const path of common) {
    const site = targetSite.get(path)!;
    const involved = [target, ...others].filter((a) => sitesOf.get(a!)!.has(path));
    const total = involved.reduce((n, a) => n + a!.rank, 0);
    const dim = matrix === 'A' ? site.in : site.out;
    if (total > dim) {
      ctx.diags.report('orthogonal_rank_exceeds_dim', c.call.span, `at \`${path}\` the ranks add up to ${total} (${involved.map((a) => `${a!.name} ${a!.rank}`).join(' + ')}) but the ${matrix === 'A' ? 'input' : 'output'} dimension is ${dim}`, {
        hint: 'rank-r subspaces can only be mutually orthogonal when their ranks sum to at most the dimension; lower the ranks',
      });
      break;
    }
  }

  return { kind: 'orthogonal', target: target.name, others: others.map((o) => o!.name), matrix, weight, norm, sites: [...common], span: c.span };
}

/** Where an adapter's placement (`at ...`) and constructor call are written, for notes. */
function placementSpan(ctx: Ctx, name: string): Span | undefined {
  return ctx.decls.get(name)?.decl.placement?.span;
}
function ctorSpan(ctx: Ctx, name: string): Span | undefined {
  return ctx.decls.get(name)?.decl.value?.span;
}

// --- eval ------------------------------------------------------------------------------------------------------

function checkEval(ctx: Ctx, e: A.Eval, stage: CheckedStage): void {
  const probes: string[] = [];
  for (const id of e.probes) {
    if (ctx.lookup(id, ['probe'], 'probe')) {
      ctx.used.add(id.name);
      probes.push(id.name);
    }
  }
  let every: number | undefined;
  if (e.every) {
    const v = ctx.ev.value(e.every, { t: 'int', min: 1 }, '`every`');
    if (typeof v === 'number') every = v;
  }
  stage.evals.push({ probes, ...(every !== undefined ? { every } : {}), span: e.span });
}

// --- transitions -----------------------------------------------------------------------------------------------

function checkTransition(ctx: Ctx, t: A.Transition, stage: CheckedStage): void {
  if (t.kind === 'merge') {
    if (!t.into || !t.into.name) return;
    if (!ctx.model || t.into.name !== ctx.model.name) {
      const info = ctx.decls.get(t.into.name);
      if (!info) ctx.diags.report('unknown_name', t.into.span, `no model named \`${t.into.name}\``, { hint: ctx.model ? `the model is \`${ctx.model.name}\`` : undefined });
      else ctx.diags.report('wrong_kind', t.into.span, `adapters merge into the model; \`${t.into.name}\` is ${article(kindNames[info.decl.declKind])} ${kindNames[info.decl.declKind]}`, { hint: ctx.model ? `write \`into ${ctx.model.name}\`` : undefined });
      return;
    }
  }
  for (const ref of t.targets) {
    const id = ref.path[0];
    const part = ref.path[1];
    if (!id || !ctx.lookup(id, ['adapter'], 'adapter')) continue;
    const name = id.name;
    ctx.used.add(name);
    const verb = { merge: 'merged', drop: 'dropped', freeze: 'frozen', unfreeze: 'unfrozen' }[t.kind];
    if (!ctx.checkAlive(ref, name, verb)) continue;
    const a = ctx.adapters.get(name);
    if (ref.path.length > 2) {
      ctx.diags.report('invalid_reference', ref.path[2].span, `\`${ref.path.map((p) => p.name).join('.')}\` goes too deep`, { hint: 'refer to an adapter or one of its parts: `noise.experts`, `noise.shared`' });
      continue;
    }
    const st = ctx.status.get(name)!;
    if (t.kind === 'merge') {
      if (a?.type === 'moe_lora') {
        if (part?.name === 'shared' && a.shared > 0) {
          stage.transitions.push({ kind: 'merge', adapter: name, part: 'shared', into: t.into!.name, span: t.span });
          continue;
        }
        if (part && part.name !== 'shared') {
          ctx.diags.report('merge_routed_mixture', ref.span, `\`${name}.${part.name}\` is routed per token and cannot be merged`, { notes: [{ message: 'declared as a mixture here', span: ctorSpan(ctx, name) ?? a.span }] });
          continue;
        }
        if (part?.name === 'shared') {
          ctx.diags.report('invalid_reference', part.span, `\`${name}\` has no shared experts to merge`, { notes: [{ message: 'declared here', span: a.span }], hint: `declare it with shared experts (\`moe_lora(..., shared: 2)\`), or drop it instead` });
          continue;
        }
        ctx.diags.report('merge_routed_mixture', ref.span, `\`${name}\` is a routed mixture (moe_lora): its output depends on the input, so it cannot be merged into static weights`, {
          notes: [{ message: 'declared as a mixture here', span: ctorSpan(ctx, name) ?? a.span }],
          hint: a.shared > 0 ? `merge its always-on shared experts (\`merge ${name}.shared into ${t.into!.name}\`) and drop the routed ones (\`drop ${name}.experts\`)` : `drop it instead (\`drop ${name}\`), or keep it as an adapter`,
        });
        continue;
      }
      if (part) {
        ctx.diags.report('invalid_reference', part.span, `a plain LoRA has no part \`${part.name}\`; merge the whole adapter`, { hint: `write \`merge ${name} into ${t.into!.name}\`` });
        continue;
      }
      st.status = 'merged';
      st.span = t.span;
      stage.transitions.push({ kind: 'merge', adapter: name, into: t.into!.name, span: t.span });
    } else if (t.kind === 'drop') {
      const tr = checkDrop(ctx, t, ref, name, stage);
      if (tr) stage.transitions.push(tr);
    } else {
      if (part) {
        ctx.diags.report('invalid_reference', part.span, `${t.kind} applies to whole adapters`, { hint: `write \`${t.kind} ${name}\`` });
        continue;
      }
      if (t.kind === 'freeze') {
        st.status = 'frozen';
        st.span = t.span;
      } else if (st.status === 'frozen') {
        st.status = 'trainable';
        st.span = t.span;
      }
      stage.transitions.push({ kind: t.kind, adapter: name, span: t.span });
    }
  }
}

function checkDrop(ctx: Ctx, t: A.Drop, ref: A.RefExpr, name: string, stage: CheckedStage): CheckedTransition | undefined {
  const a = ctx.adapters.get(name);
  const part = ref.path[1];
  const st = ctx.status.get(name)!;
  if (part && part.name !== 'experts') {
    ctx.diags.report('invalid_reference', part.span, `cannot drop \`${name}.${part.name}\``, { hint: 'drop a whole adapter (`drop noise`) or the routed experts of a mixture (`drop noise.experts [where load < 2%]`)' });
    return undefined;
  }
  if (part && a && a.type !== 'moe_lora') {
    ctx.diags.report('invalid_reference', part.span, `\`${name}\` is a plain LoRA; it has no routed experts`, { notes: [{ message: 'declared here', span: a.span }], hint: `write \`drop ${name}\` to drop the whole adapter` });
    return undefined;
  }
  let condition: { metric: 'load'; op: A.Condition['op']; value: number } | undefined;
  if (t.condition) {
    if (a && a.type !== 'moe_lora') {
      ctx.diags.report('invalid_drop_condition', t.condition.span, `a condition selects routed experts, but \`${name}\` is a plain LoRA`, { notes: [{ message: 'declared here', span: a.span }], hint: `write \`drop ${name}\` without a condition, or put the condition on a mixture's experts` });
      return undefined;
    }
    const m = t.condition.metric;
    if (m.name !== 'load') {
      ctx.diags.report('invalid_drop_condition', m.span, `unknown expert metric \`${m.name}\``, { hint: didYouMean(m.name, ['load']) ?? '`load` is the share of routed tokens an expert received during the stage' });
      return undefined;
    }
    if (!t.condition.value) return undefined;
    const v = ctx.ev.value(t.condition.value, { t: 'fraction' }, '`load`');
    if (typeof v !== 'number') return undefined;
    condition = { metric: 'load', op: t.condition.op, value: v };
  }
  const sharedLives = a?.type === 'moe_lora' && a.shared > 0;
  if (condition) {
    // Some experts go; the adapter stays.
  } else if (part && sharedLives) {
    ctx.routedDropped.add(name);
  } else {
    st.status = 'dropped';
    st.span = t.span;
  }
  return { kind: 'drop', adapter: name, ...(part || condition ? { part: 'experts' as const } : {}), ...(condition ? { condition } : {}), span: t.span };
}
