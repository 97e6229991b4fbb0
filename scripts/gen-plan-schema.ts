/**
 * `npm run schema`: writes src/plan/schema.json (JSON Schema, draft 2020-12) from the plan types in
 * src/plan/types.ts, so the schema cannot drift from the types both the compiler and the runtime use.
 * With `--check`, writes nothing and exits 1 when the file is out of date (a test checks the same).
 *
 * The translation is syntactic and strict: interfaces and object literals become closed objects
 * (`additionalProperties: false`, every non-optional key required), unions of string literals become
 * enums, `typeof CONST` becomes `const`, `Record<string, X>` an open map of X, tuples fixed-length arrays,
 * and a union of objects that share a literal-typed key (`kind`, `op`) a tagged union checked with
 * `if`/`then` per tag (so a validation error names the missing key, not "must match one of 5 schemas").
 * A type it does not know is an error naming the line, never a silently loose schema.
 *
 * What a TypeScript type cannot say (integers, minimums, patterns) is added by `refinements` below,
 * keyed by a path through the types: `Type.prop.prop`, `[]` for array items, `{}` for map values,
 * `|N` for the N-th member of a union, `.N` for a tuple element. A refinement whose path no longer
 * exists is an error too, so the list cannot rot.
 *
 * Adding a field to the plan: add it to src/plan/types.ts, run `npm run schema`, commit both.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Node, Project, SyntaxKind, type JSDocableNode, type SourceFile, type TypeNode } from 'ts-morph';

export const TYPES_PATH = fileURLToPath(new URL('../src/plan/types.ts', import.meta.url));
export const SCHEMA_PATH = fileURLToPath(new URL('../src/plan/schema.json', import.meta.url));

type Schema = Record<string, unknown>;

const int = (minimum = 0): Schema => ({ type: 'integer', minimum });
const nonNegative: Schema = { minimum: 0 };
const nonEmpty: Schema = { minLength: 1 };
const positive: Schema = { exclusiveMinimum: 0 };

/** Refinements the types cannot express. Keys are paths through the types (see the file comment). */
export const refinements: Record<string, Schema> = {
  'Plan.pipeline': nonEmpty,
  'Plan.compiler.passes[].name': nonEmpty,
  'Plan.compiler.passes[].changes': int(),
  'Plan.sources[].sha256': { pattern: '^[0-9a-f]{64}$' },
  'Plan.adapters[].name': nonEmpty,
  'Plan.adapters[].r': int(1),
  'Plan.adapters[].experts': int(),
  'Plan.adapters[].topK': int(),
  'Plan.adapters[].shared': int(),
  'Plan.adapters[].dropout': { minimum: 0, maximum: 1 },
  'Plan.adapters[].loadBalance': nonNegative,
  'Plan.adapters[].routerNoise': nonNegative,
  'Plan.data[].maxRecords': int(1),
  'Plan.probes[].maxExamples': int(1),
  'PlanModelConfig.vocab': int(1),
  'PlanModelConfig.hidden': int(1),
  'PlanModelConfig.layers': int(1),
  'PlanModelConfig.heads': int(1),
  'PlanModelConfig.kvHeads': int(1),
  'PlanModelConfig.headDim': int(1),
  'PlanModelConfig.ffn': int(1),
  'PlanModelConfig.maxPositions': int(1),
  'PlanModelConfig.ropeTheta': positive,
  'PlanModelConfig.rmsEps': positive,
  'Dim|0': int(1),
  'PlanParam.id': nonEmpty,
  'PlanParam.shape[]': int(1),
  'PlanKernel.id': nonEmpty,
  'PlanValue.id': nonEmpty,
  'PlanStep.node': nonEmpty,
  'PlanStep.kernel': nonEmpty,
  'PlanStep.layer': int(),
  'PlanStep.flops': nonNegative,
  'PlanStep.bytes': nonNegative,
  'PlanBackwardStep.kernel': nonEmpty,
  'PlanBackwardStep.flops': nonNegative,
  'PlanTransition|2.condition.op': { enum: ['<', '<=', '>', '>='] },
  'PlanBuffer.bytes': int(),
  'PlanBuffer.live.0': int(),
  'PlanBuffer.live.1': int(),
  'PlanStageSettings.epochs': int(1),
  'PlanStageSettings.steps': int(1),
  'PlanStageSettings.lr': positive,
  'PlanStageSettings.batch': int(1),
  'PlanStageSettings.microBatch': int(1),
  'PlanStageSettings.maxLen': int(1),
  'PlanStageSettings.weightDecay': nonNegative,
  'PlanStageSettings.gradClip': nonNegative,
  'PlanStageSettings.seed': int(),
  'PlanStageSettings.memoryBytes': int(1),
  'PlanStageSettings.checkpointEvery': int(),
  'PlanStageSettings.maxBadSteps': int(1),
  'PlanStageSettings.schedule.minLr': nonNegative,
  'PlanStageSettings.schedule.warmup|0.percent': { minimum: 0, maximum: 100 },
  'PlanStageSettings.schedule.warmup|1.steps': int(),
  'PlanStage.name': nonEmpty,
  'PlanStage.index': int(),
  'PlanStage.evals[].every': int(1),
  'PlanStage.optimizer.dispatches': int(),
  'PlanStage.memory.microBatch': int(1),
  'PlanStage.memory.budget': int(1),
  'PlanStage.memory.bytes.params': int(),
  'PlanStage.memory.bytes.grads': int(),
  'PlanStage.memory.bytes.optimizer': int(),
  'PlanStage.memory.bytes.activations': int(),
  'PlanStage.memory.bytes.peak': int(),
  'PlanStage.estimates.tokensPerMicroBatch': int(1),
  'PlanStage.estimates.microBatchesPerStep': int(1),
  'PlanStage.estimates.flopsPerStep': nonNegative,
  'PlanStage.estimates.forwardFlopsPerStep': nonNegative,
  'PlanStage.estimates.backwardFlopsPerStep': nonNegative,
  'PlanStage.estimates.bytesPerStep': nonNegative,
  'PlanStage.estimates.dispatchesPerStep': int(),
  'PlanStage.estimates.kernels': int(),
  'PlanStage.estimates.peakBytes': int(),
  'PlanStage.estimates.trainableParams': int(),
};

/** The plan types as a JSON Schema document (an object; `generatePlanSchemaText` gives the file's bytes). */
export function generatePlanSchema(typesText = readFileSync(TYPES_PATH, 'utf8')): Schema {
  const project = new Project({ useInMemoryFileSystem: true });
  const file = project.createSourceFile('/types.ts', typesText);
  const gen = new Generator(file);
  const root = gen.named('Plan');
  const unused = Object.keys(refinements).filter((k) => !gen.usedRefinements.has(k));
  if (unused.length) throw new Error(`gen-plan-schema: refinements for paths that no longer exist in src/plan/types.ts: ${unused.join(', ')}`);
  const defs: Record<string, Schema> = {};
  for (const name of gen.declarationOrder()) if (name !== 'Plan' && gen.defs.has(name)) defs[name] = gen.defs.get(name)!;
  const { description, ...rootBody } = root;
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'urn:mcpc:plan:1',
    $comment: 'Generated from src/plan/types.ts by scripts/gen-plan-schema.ts (`npm run schema`). Do not edit by hand.',
    title: 'mcpc execution plan',
    ...(description !== undefined ? { description } : {}),
    ...rootBody,
    $defs: defs,
  };
}

export function generatePlanSchemaText(typesText?: string): string {
  return JSON.stringify(generatePlanSchema(typesText), null, 2) + '\n';
}

class Generator {
  readonly defs = new Map<string, Schema>();
  readonly usedRefinements = new Set<string>();
  private readonly inProgress = new Set<string>();

  constructor(private readonly file: SourceFile) {}

  declarationOrder(): string[] {
    return [...this.file.getInterfaces().map((d) => [d.getStart(), d.getName()] as const), ...this.file.getTypeAliases().map((d) => [d.getStart(), d.getName()] as const)]
      .sort((a, b) => a[0] - b[0])
      .map(([, n]) => n);
  }

  /** The schema of a named interface or type alias, translated once; references use `$ref`. */
  named(name: string): Schema {
    const iface = this.file.getInterface(name);
    const alias = this.file.getTypeAlias(name);
    if (!iface && !alias) throw new Error(`gen-plan-schema: no interface or type alias '${name}' in src/plan/types.ts`);
    if (this.defs.has(name) || this.inProgress.has(name)) return this.defs.get(name)!;
    this.inProgress.add(name);
    let schema: Schema;
    if (iface) {
      if (iface.getExtends().length || iface.getTypeParameters().length) throw this.unsupported(iface, 'interfaces with `extends` or type parameters');
      schema = this.object(iface.getProperties(), name);
    } else {
      if (alias!.getTypeParameters().length) throw this.unsupported(alias!, 'generic type aliases');
      schema = this.type(alias!.getTypeNodeOrThrow(), name);
    }
    const description = docOf(iface ?? alias!);
    if (description) schema = { description, ...schema };
    this.defs.set(name, schema);
    this.inProgress.delete(name);
    return schema;
  }

  private ref(name: string): Schema {
    this.named(name);
    return { $ref: `#/$defs/${name}` };
  }

  private object(props: Node[], path: string): Schema {
    const properties: Record<string, Schema> = {};
    const required: string[] = [];
    for (const p of props) {
      if (!Node.isPropertySignature(p)) throw this.unsupported(p, 'object members other than plain properties');
      const key = p.getName().replace(/^['"]|['"]$/g, '');
      const typeNode = p.getTypeNode();
      if (!typeNode) throw this.unsupported(p, 'properties without a type');
      let s = this.type(typeNode, `${path}.${key}`);
      const description = docOf(p);
      if (description) s = { description, ...s };
      properties[key] = s;
      if (!p.hasQuestionToken()) required.push(key);
    }
    return { type: 'object', properties, required, additionalProperties: false };
  }

  private type(node: TypeNode, path: string): Schema {
    return this.refine(this.translate(node, path), path);
  }

  private refine(schema: Schema, path: string): Schema {
    const r = refinements[path];
    if (!r) return schema;
    this.usedRefinements.add(path);
    if (schema.$ref) throw new Error(`gen-plan-schema: refinement '${path}' targets a reference; refine the named type instead`);
    return { ...schema, ...r };
  }

  private translate(node: TypeNode, path: string): Schema {
    switch (node.getKind()) {
      case SyntaxKind.StringKeyword:
        return { type: 'string' };
      case SyntaxKind.NumberKeyword:
        return { type: 'number' };
      case SyntaxKind.BooleanKeyword:
        return { type: 'boolean' };
      case SyntaxKind.UnknownKeyword:
        return {};
      case SyntaxKind.ParenthesizedType:
        return this.translate(node.asKindOrThrow(SyntaxKind.ParenthesizedType).getTypeNode(), path);
      case SyntaxKind.LiteralType:
        return { const: literalValue(node.asKindOrThrow(SyntaxKind.LiteralType).getLiteral(), this) };
      case SyntaxKind.TypeQuery: {
        const name = node.asKindOrThrow(SyntaxKind.TypeQuery).getExprName().getText();
        const init = this.file.getVariableDeclaration(name)?.getInitializer();
        if (!init) throw this.unsupported(node, `\`typeof ${name}\` without a constant initializer`);
        return { const: literalValue(init, this) };
      }
      case SyntaxKind.ArrayType:
        return { type: 'array', items: this.type(node.asKindOrThrow(SyntaxKind.ArrayType).getElementTypeNode(), `${path}[]`) };
      case SyntaxKind.TupleType: {
        const elements = node.asKindOrThrow(SyntaxKind.TupleType).getElements();
        return { type: 'array', prefixItems: elements.map((e, i) => this.type(e, `${path}.${i}`)), minItems: elements.length, maxItems: elements.length };
      }
      case SyntaxKind.TypeLiteral:
        return this.object(node.asKindOrThrow(SyntaxKind.TypeLiteral).getMembers(), path);
      case SyntaxKind.TypeReference: {
        const ref = node.asKindOrThrow(SyntaxKind.TypeReference);
        const name = ref.getTypeName().getText();
        const args = ref.getTypeArguments();
        if (name === 'Record' && args.length === 2 && args[0]!.getKind() === SyntaxKind.StringKeyword) {
          const value = args[1]!;
          return value.getKind() === SyntaxKind.UnknownKeyword ? { type: 'object' } : { type: 'object', additionalProperties: this.type(value, `${path}{}`) };
        }
        if (name === 'Array' && args.length === 1) return { type: 'array', items: this.type(args[0]!, `${path}[]`) };
        if (args.length === 0 && (this.file.getInterface(name) || this.file.getTypeAlias(name))) return this.ref(name);
        throw this.unsupported(node, `the type reference \`${ref.getText()}\``);
      }
      case SyntaxKind.UnionType:
        return this.union(node.asKindOrThrow(SyntaxKind.UnionType).getTypeNodes(), path);
      default:
        throw this.unsupported(node, `\`${node.getKindName()}\``);
    }
  }

  private union(members: TypeNode[], path: string): Schema {
    const schemas = members.map((m, i) => this.type(m, `${path}|${i}`));
    // 'a' | 'b' | 'c' -> one enum
    if (schemas.every((s) => 'const' in s && Object.keys(s).length === 1)) {
      const values = schemas.map((s) => s.const);
      return values.every((v) => typeof v === 'string') ? { type: 'string', enum: values } : { enum: values };
    }
    const objects = schemas.map((s) => this.objectSchema(s));
    if (objects.every((o) => o !== undefined)) {
      const tag = discriminator(objects as Schema[]);
      if (tag) {
        const tagValues = (objects as Schema[]).map((o) => tagValuesOf(o, tag)!);
        return {
          type: 'object',
          properties: { [tag]: { enum: tagValues.flat() } },
          required: [tag],
          allOf: schemas.map((s, i) => ({ if: { properties: { [tag]: tagValues[i]!.length === 1 ? { const: tagValues[i]![0] } : { enum: tagValues[i] } } }, then: s })),
        };
      }
    }
    return { oneOf: schemas };
  }

  /** The closed-object schema behind `s` (following one `$ref`), or undefined when it is not one. */
  private objectSchema(s: Schema): Schema | undefined {
    const target = typeof s.$ref === 'string' ? this.defs.get(s.$ref.replace('#/$defs/', '')) : s;
    return target && target.type === 'object' && target.properties ? target : undefined;
  }

  unsupported(node: Node, what: string): Error {
    return new Error(`gen-plan-schema: src/plan/types.ts:${node.getStartLineNumber()}: ${what} has no translation to JSON Schema; use plain interfaces, literals, unions, arrays and Record<string, X> (or extend scripts/gen-plan-schema.ts)`);
  }
}

function literalValue(node: Node, gen: Generator): string | number | boolean | null {
  if (Node.isStringLiteral(node) || Node.isNoSubstitutionTemplateLiteral(node)) return node.getLiteralValue();
  if (Node.isNumericLiteral(node)) return node.getLiteralValue();
  if (Node.isTrueLiteral(node)) return true;
  if (Node.isFalseLiteral(node)) return false;
  if (node.getKind() === SyntaxKind.NullKeyword) return null;
  throw gen.unsupported(node, `the literal \`${node.getText()}\``);
}

/** The literal values an object schema's `tag` property may take, or undefined when it is not a literal. */
function tagValuesOf(o: Schema, tag: string): (string | number | boolean)[] | undefined {
  const p = (o.properties as Record<string, Schema>)[tag];
  if (!p || !(o.required as string[]).includes(tag)) return undefined;
  if ('const' in p) return [p.const as string];
  if (Array.isArray(p.enum)) return p.enum as string[];
  return undefined;
}

/** A required property whose literal values tell the members of a union of objects apart. */
function discriminator(objects: Schema[]): string | undefined {
  const candidates = Object.keys(objects[0]!.properties as object);
  for (const tag of candidates) {
    const values = objects.map((o) => tagValuesOf(o, tag));
    if (values.some((v) => v === undefined)) continue;
    const all = values.flat();
    if (new Set(all).size === all.length) return tag;
  }
  return undefined;
}

function docOf(node: JSDocableNode): string | undefined {
  const text = node
    .getJsDocs()
    .map((d) => d.getDescription().trim())
    .filter(Boolean)
    .join('\n');
  return text ? text.replace(/\s*\n\s*/g, ' ') : undefined;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const text = generatePlanSchemaText();
  let current: string | undefined;
  try {
    current = readFileSync(SCHEMA_PATH, 'utf8');
  } catch {
    current = undefined;
  }
  if (process.argv.includes('--check')) {
    if (current !== text) {
      console.error('src/plan/schema.json is out of date: run `npm run schema`');
      process.exit(1);
    }
    console.log('src/plan/schema.json is up to date');
  } else if (current === text) {
    console.log('src/plan/schema.json is up to date');
  } else {
    writeFileSync(SCHEMA_PATH, text);
    console.log(`wrote src/plan/schema.json (${Object.keys(generatePlanSchema().$defs as object).length} definitions)`);
  }
}
