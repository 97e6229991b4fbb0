/**
 * Evaluation probes (a stage's `eval`): what each probe kind measures is in probes.ts.
 *
 *     model.ts       next-token logits from a stage runner (one forward per call, sequences as rows)
 *     generate.ts    exact greedy generation, batched, with draft verification
 *     json-match.ts  the json_format verdict on an answer or on a prefix of one
 *     probes.ts      reading a probe's records, and the three measurements
 *
 * {@link ProbeSuite} is what `runPlan` uses: probe data is read once per run and measured on any runner.
 */
import type { Plan } from '../../plan/types.js';
import type { StageRunner } from '../executor.js';
import { runnerLogits } from './model.js';
import { prepareProbe, runProbe, type PreparedProbe, type ProbeDataOptions, type ProbeResult } from './probes.js';

export { ProbeError, runnerLogits, type LogitsModel } from './model.js';
export { generateGreedy, type Generation, type GenerateOptions, type GenerateStats } from './generate.js';
export { judgeJson, type JsonVerdict } from './json-match.js';
export { DEFAULT_JSON_EXAMPLES, JSON_SLACK, describeProbe, parseOptions, prepareProbe, runProbe, scoreChoices, scoreJson, type PreparedProbe, type ProbeResult } from './probes.js';

export class ProbeSuite {
  private readonly cache = new Map<string, PreparedProbe>();

  constructor(
    private readonly plan: Plan,
    private readonly opts: ProbeDataOptions,
  ) {}

  /** Measures the named probes on the runner's current parameters, `rows` sequences per forward. */
  async run(runner: StageRunner, names: readonly string[], rows: number): Promise<ProbeResult[]> {
    const model = runnerLogits(runner, rows, this.opts.tokenizer.pad);
    const out: ProbeResult[] = [];
    for (const name of names) out.push(await runProbe(model, await this.prepared(name, runner.stage.settings.maxLen)));
    return out;
  }

  private async prepared(name: string, maxLen: number): Promise<PreparedProbe> {
    const kind = this.plan.probes.find((p) => p.name === name)?.kind;
    const key = kind === 'perplexity' ? `${name}@${maxLen}` : name;
    let p = this.cache.get(key);
    if (!p) {
      p = await prepareProbe(this.plan, name, maxLen, this.opts);
      this.cache.set(key, p);
    }
    return p;
  }
}
