/**
 * The one catalogue of diagnostics. Every message the compiler can print is written here once, under a
 * stable snake_case code that users can search for, configure (lint rules only) and suppress in SARIF.
 *
 * `kind: 'error'` entries are hard errors (syntax, names, types): they cannot be downgraded.
 * `kind: 'lint'` entries are rules whose level (`error`, `warning`, `off`) `mcpc.yaml` may change.
 */

export type Severity = 'error' | 'warning';
export type Level = Severity | 'off';

export interface CatalogueEntry {
  kind: 'error' | 'lint';
  /** Default level; hard errors are always 'error'. */
  level: Severity;
  /** One line for rule listings (SARIF `shortDescription`, `mcpc explain-code`). */
  title: string;
  /** What the rule protects against, for SARIF `fullDescription` and docs. */
  description: string;
  /** Default hint when the reporter gives none. */
  hint?: string;
}

const e = (title: string, description: string, hint?: string): CatalogueEntry => ({ kind: 'error', level: 'error', title, description, hint });
const lint = (level: Severity, title: string, description: string, hint?: string): CatalogueEntry => ({ kind: 'lint', level, title, description, hint });

export const catalogue = {
  // --- syntax -------------------------------------------------------------------------------------------
  invalid_character: e('Invalid character', 'The lexer met a character that starts no token of the language.', 'remove it; comments start with `//` or `/*`'),
  unterminated_string: e('Unterminated string', 'A string literal is not closed before the end of the line.', 'close the string with `"` on the same line'),
  unterminated_comment: e('Unterminated block comment', 'A `/*` comment is not closed before the end of the file.', 'close the comment with `*/`'),
  unexpected_token: e('Unexpected token', 'The parser expected a different token here.'),
  unexpected_end: e('Unexpected end of file', 'The file ends in the middle of a construct.'),
  nesting_too_deep: e('Nesting too deep', 'Brackets are nested deeper than the compiler accepts (a sign of a corrupted file).', 'pipelines never need more than a few levels of brackets'),
  file_too_large: e('File too large', 'The file is larger than the compiler accepts for a pipeline.', 'pipelines are small text files; check that the right file was passed'),
  missing_pipeline_header: e('Missing pipeline header', 'Every pipeline file starts with `pipeline <name>`.', 'add `pipeline my_pipeline` as the first line'),
  project_file_invalid: e('Invalid project file', '`mcpc.yaml` is not valid: a YAML error, an unknown key, a custom tag or a value of the wrong type.'),
  unreadable_file: e('Unreadable file', 'A file named on the command line or in the pipeline could not be read.'),

  // --- names and types ------------------------------------------------------------------------------------
  unknown_name: e('Unknown name', 'A name does not refer to any declaration visible here.'),
  duplicate_declaration: e('Duplicate declaration', 'Two declarations share one name.', 'rename one of them, or write `override` in a pipeline that extends another'),
  wrong_kind: e('Wrong kind of name', 'A name refers to a declaration of another kind than this place needs (e.g. data where an adapter is expected).'),
  unknown_constructor: e('Unknown constructor', 'A declaration calls a constructor the language does not have.'),
  unknown_argument: e('Unknown argument', 'A constructor received a named argument it does not take.'),
  missing_argument: e('Missing argument', 'A constructor needs an argument that was not given.'),
  duplicate_argument: e('Duplicate argument', 'The same argument is given twice.'),
  too_many_arguments: e('Too many arguments', 'A constructor received more positional arguments than it takes.'),
  invalid_value: e('Invalid value', 'A value has the wrong type or lies outside what it may be.'),
  unknown_hyperparameter: e('Unknown hyperparameter', 'A stage sets a hyperparameter the trainer does not know.'),
  duplicate_setting: e('Duplicate setting', 'A stage sets the same hyperparameter twice.', 'keep one of them'),
  invalid_placement: e('Invalid placement', 'An adapter is placed on a module that is not a linear projection, or is declared without a placement.'),
  invalid_reference: e('Invalid reference', 'A dotted reference names a part that the adapter does not have.'),
  invalid_drop_condition: e('Invalid drop condition', 'A conditional drop rule uses a metric or comparison that does not apply.'),
  selector_index_out_of_range: e('Selector index out of range', 'A layer index or range in a selector lies outside the model.'),
  model_config_not_found: e('Model config not found', 'An `hf()` model directory has no readable `config.json`.'),
  model_config_invalid: e('Model config invalid', 'A model `config.json` is not a supported decoder configuration.'),
  unknown_builtin_model: e('Unknown built-in model', 'A `builtin()` model names a configuration the compiler does not ship.'),
  extends_not_found: e('Base pipeline not found', 'The file named after `extends` could not be read.'),
  extends_cycle: e('Cyclic extends', 'Pipelines extend each other in a cycle.'),
  override_nothing: e('Override of nothing', '`override` is written on a declaration or stage that the base pipeline does not have.', 'remove `override`, or check the name against the base pipeline'),
  redeclared_from_base: e('Redeclared without override', 'A pipeline that extends another declares a name the base already has.', 'write `override` before it to replace the base version'),
  unknown_stage: e('Unknown stage', 'A stage position (`after X`) names a stage that does not exist.'),
  stage_setting_conflict: e('Conflicting settings', 'Two settings of a stage contradict each other.'),
  missing_model: e('No model', 'A pipeline must declare the model it trains.', 'add `model base = builtin("qwen2-tiny")` or `model base = hf("models/my-model")`'),
  multiple_models: e('Several models', 'A pipeline trains exactly one model.', 'keep one `model` declaration'),
  invalid_statement: e('Statement not allowed here', 'A statement appears where the language does not allow it (e.g. a data declaration inside a stage, two train statements in one stage).'),
  file_not_found: e('File not found', 'A data file or directory named in the pipeline does not exist.', 'generate the file first, or fix the path (paths are relative to the project root)'),

  // --- lint rules ------------------------------------------------------------------------------------------
  use_after_drop: lint('error', 'Adapter used after it was dropped', 'An adapter is referenced (trained, merged, frozen, constrained, exported) after a transition dropped it.', 'remove the use, or drop the adapter later'),
  use_after_merge: lint('error', 'Adapter used after it was merged', 'An adapter is referenced after it was merged into the base weights; it no longer exists as a separate module.', 'reference it before the merge, or do not merge it'),
  merge_routed_mixture: lint('error', 'Merging a routed mixture', 'A mixture with a router is input-dependent and cannot be folded into static base weights.', 'drop the routed experts instead, or merge only the always-on shared experts (`merge X.shared into base`)'),
  train_frozen_adapter: lint('error', 'Training a frozen adapter', 'A stage trains an adapter that an earlier transition froze.', 'unfreeze it first (`then { unfreeze X }` in an earlier stage), or remove it from `train`'),
  orthogonal_no_common_site: lint('error', 'Orthogonality with no common site', 'The adapters in an orthogonality constraint share no module, so the penalty is empty.', 'place both adapters on at least one common module'),
  orthogonal_rank_exceeds_dim: lint('error', 'Orthogonality cannot be exact', 'At a site, the ranks of the constrained adapters add up to more than the input dimension, so their row spaces cannot be mutually orthogonal.', 'lower the ranks, or accept a penalty that cannot reach zero by setting this rule to `warning`'),
  selector_matches_nothing: lint('error', 'Selector matches nothing', 'A placement selector resolves to no module of the model.'),
  top_k_exceeds_experts: lint('error', 'top_k larger than experts', 'A mixture routes each token to more experts than it has.', 'set top_k to at most the number of experts'),
  adapter_never_trained: lint('warning', 'Adapter never trained', 'An adapter is declared but no stage trains it; it would stay at its initial value.', 'add it to a stage\'s `train` list, or remove it'),
  stage_trains_nothing: lint('warning', 'Stage trains nothing', 'A stage has no `train` statement, so it updates no weights.', 'add `train <adapter> on <data>`'),
  data_never_used: lint('warning', 'Data never used', 'A data source is declared but no stage trains on it and no probe reads it.', 'use it in `train ... on`, in a probe, or remove it'),
  unused_declaration: lint('warning', 'Declaration never used', 'A tokenizer or probe is declared but never referenced.'),
  unreachable_export: lint('error', 'Unreachable export', 'An export names an adapter dropped by the end of the pipeline, or has nothing to export.'),
  duplicate_export: lint('error', 'Duplicate export', 'Two exports write the same thing or to the same path; the second would overwrite the first.', 'remove one, or give each its own path'),
  lr_out_of_range: lint('error', 'Learning rate out of range', 'A learning rate is not in (0, 1]; adapter training uses values around 1e-5 to 1e-3.'),
  warmup_out_of_range: lint('error', 'Warmup out of range', 'A warmup is negative, above 100% of the stage, or longer than the stage.'),
  path_escapes_root: lint('error', 'Path escapes the project root', 'A file path in the pipeline resolves outside the project directory.', 'keep data, models and outputs inside the project, or set `allow_outside_root: true` in mcpc.yaml'),
  batch_not_divisible: lint('error', 'Batch not divisible by micro-batch', 'The effective batch must be a whole number of micro-batches for gradient accumulation.'),
  constraint_on_frozen: lint('warning', 'Constraint on an adapter that does not train', 'The first adapter of an orthogonality constraint is not trained in this stage, so the penalty has no gradient to act on.', 'constrain the adapter this stage trains'),
  memory_budget_exceeded: lint('warning', 'Memory budget exceeded', 'The memory planner estimates that a stage needs more than its memory budget (`memory` in the stage, or in mcpc.yaml) even with micro-batch 1 and activation recomputation; training would run out of memory.', 'raise `memory`, lower `max_len`, or train a smaller model'),
} satisfies Record<string, CatalogueEntry>;

export type Code = keyof typeof catalogue;

export const codes = Object.keys(catalogue) as Code[];

export function isCode(s: string): s is Code {
  return Object.prototype.hasOwnProperty.call(catalogue, s);
}
