/** `mcpc models`: the built-in model configurations with their shapes and parameter counts. */
import { builtinModels, parameterCount } from '../../compiler/2-check/models.js';
import { parse } from '../args.js';
import { UsageError, type Command } from '../io.js';

export const modelsHelp = `usage: mcpc models

List the built-in model configurations (layers, hidden size, heads, vocabulary, parameters),
as named in \`model base = builtin("NAME")\`.
`;

export const modelsCommand: Command = async (argv, io) => {
  const { values, positionals } = parse(argv, { help: { type: 'boolean', short: 'h', default: false } });
  if (values.help) {
    io.stdout(modelsHelp);
    return 0;
  }
  if (positionals.length) throw new UsageError(`takes no arguments, got '${positionals[0]}' (mcpc models lists every built-in model)`);
  const rows = Object.entries(builtinModels).map(([name, c]) => [
    name,
    String(c.layers),
    String(c.hidden),
    String(c.ffn),
    `${c.heads}/${c.kvHeads}`,
    String(c.vocab),
    c.tied ? 'tied' : 'untied',
    formatCount(parameterCount(c)),
  ]);
  const head = ['name', 'layers', 'hidden', 'ffn', 'heads/kv', 'vocab', 'embed', 'params'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  io.stdout([line(head), ...rows.map(line)].join('\n') + '\nuse as: model base = builtin("qwen2-tiny")\n');
  return 0;
};

function formatCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  return `${(n / 1e3).toFixed(1)}K`;
}
