/**
 * The `mcpc` command line: dispatches to one command per verb. Never prints a stack trace for user
 * mistakes: usage errors and internal errors exit 2 with one readable line.
 */
import { processIO, UsageError, type CliIO, type Command } from './io.js';
import { version } from './version.js';

// Each command is loaded only when its verb runs: `lint` must not pay for tfjs, ajv or ts-morph at startup.
const commands: Record<string, { load: () => Promise<Command>; summary: string }> = {
  lint: { load: async () => (await import('./commands/lint.js')).lintCommand, summary: 'check pipelines (syntax, names, selectors, lint rules); text, json or sarif output' },
  fmt: { load: async () => (await import('./commands/fmt.js')).fmtCommand, summary: 'rewrite pipelines in the canonical layout (--check: exit 1 when a file would change)' },
  compile: { load: async () => (await import('./commands/compile.js')).compileCommand, summary: 'compile a pipeline to its execution plan (<out>/<pipeline>.plan.json)' },
  explain: { load: async () => (await import('./commands/explain.js')).explainCommand, summary: 'show per stage what trains, what is folded, merged, dropped, the kernels, FLOPs and memory' },
  run: { load: async () => (await import('./commands/run.js')).runCommand, summary: 'train every stage of a plan (WebGPU or CPU backends), with checkpoints, --resume, metrics and the exports' },
  models: { load: async () => (await import('./commands/models.js')).modelsCommand, summary: 'list the built-in model configurations' },
};

export const help = `mcpc ${version}: compiler and runtime for .mcp multi-stage adapter fine-tuning pipelines

usage: mcpc <command> [options]

commands:
${Object.entries(commands)
  .map(([name, c]) => `  ${name.padEnd(8)} ${c.summary}`)
  .join('\n')}

Run \`mcpc <command> --help\` for a command's options.
`;

export async function main(argv: string[], io: CliIO = processIO()): Promise<number> {
  const [verb, ...rest] = argv;
  if (!verb || verb === '--help' || verb === '-h' || verb === 'help') {
    io.stdout(help);
    return verb ? 0 : 2;
  }
  if (verb === '--version' || verb === '-v') {
    io.stdout(`${version}\n`);
    return 0;
  }
  const cmd = commands[verb];
  if (!cmd) {
    io.stderr(`mcpc: unknown command '${verb}'\n\n${help}`);
    return 2;
  }
  try {
    return await (await cmd.load())(rest, io);
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr(`mcpc ${verb}: ${err.message}\n`);
      return 2;
    }
    io.stderr(`mcpc ${verb}: internal error: ${(err as Error)?.stack ?? String(err)}\nThis is a bug in mcpc; please report it with the input that caused it.\n`);
    return 2;
  }
}
