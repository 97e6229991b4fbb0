/**
 * chevrotain, loaded from its single-file ESM build. The package's main entry is ~700 small modules, which
 * cost seconds of startup through tsx's loader; the single file is the same library in one module. Every
 * file must import chevrotain from here (never from 'chevrotain' directly): token types and GAST classes
 * are compared by identity, so two copies must never mix. Types come from the package's declarations.
 */
import type * as Chevrotain from 'chevrotain';
// @ts-expect-error: the single-file build ships no declarations of its own; it is typed just below.
import * as bundle from '../../../node_modules/chevrotain/lib/chevrotain.mjs';

const c = bundle as typeof Chevrotain;

export const {
  Alternation,
  Alternative,
  createToken,
  CstParser,
  EMPTY_ALT,
  EOF,
  Lexer,
  NonTerminal,
  Option,
  Repetition,
  RepetitionMandatory,
  RepetitionMandatoryWithSeparator,
  RepetitionWithSeparator,
  Rule,
  Terminal,
  tokenMatcher,
} = c;

// Classes are values above; their instance types under the same names:
export type Alternation = Chevrotain.Alternation;
export type Alternative = Chevrotain.Alternative;
export type CstParser = Chevrotain.CstParser;
export type Lexer = Chevrotain.Lexer;
export type NonTerminal = Chevrotain.NonTerminal;
export type Option = Chevrotain.Option;
export type Repetition = Chevrotain.Repetition;
export type RepetitionMandatory = Chevrotain.RepetitionMandatory;
export type RepetitionMandatoryWithSeparator = Chevrotain.RepetitionMandatoryWithSeparator;
export type RepetitionWithSeparator = Chevrotain.RepetitionWithSeparator;
export type Rule = Chevrotain.Rule;
export type Terminal = Chevrotain.Terminal;

export type * from 'chevrotain';
