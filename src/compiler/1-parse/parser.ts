/**
 * The chevrotain grammar of `.mcp`. Pure syntax: no semantics, no AST building (see to-ast.ts). Error
 * recovery is on, so one run reports every independent syntax error; recovered CST nodes may miss children.
 * `grammar/mcp.ebnf` is generated from these rules (`npm run grammar`) and a test keeps the two identical.
 */
import { CstParser, EOF, tokenMatcher, type IParserErrorMessageProvider, type IRecognitionException, type IToken, type TokenType } from './chevrotain.js';
import * as T from './tokens.js';

/** After this many syntax errors in one file the rest are noise: the parser stops there. */
export const MAX_SYNTAX_ERRORS = 50;

/** Thrown by the parser at its MAX_SYNTAX_ERRORS + 1st error; `parse` catches it. */
export class TooManySyntaxErrors extends Error {}

/** Chevrotain's own SAVE_ERROR (not in its typings), which McpParser wraps. */
const saveError = (CstParser.prototype as unknown as { SAVE_ERROR(this: CstParser, e: IRecognitionException): IRecognitionException }).SAVE_ERROR;

const describeToken = (tok: IToken): string => (tok.tokenType === EOF ? 'end of file' : `'${tok.image}'`);

const alternatives = (paths: TokenType[][][]): string => {
  const firsts = new Set<string>();
  for (const alt of paths) for (const path of alt) if (path[0]) firsts.add(T.describeTokenType(path[0]));
  const list = [...firsts];
  if (list.length <= 1) return list[0] ?? 'something else';
  return `${list.slice(0, -1).join(', ')} or ${list[list.length - 1]}`;
};

const messages: IParserErrorMessageProvider = {
  buildMismatchTokenMessage: ({ expected, actual }) =>
    expected === T.Ident && tokenMatcher(actual, T.Keyword)
      ? `expected a name but found the keyword '${actual.image}', which cannot be used as a name`
      : `expected ${T.describeTokenType(expected)} but found ${describeToken(actual)}`,
  buildNotAllInputParsedMessage: ({ firstRedundant }) => `unexpected ${describeToken(firstRedundant)} after the end of the pipeline`,
  // A value can start with nine kinds of token; listing them all says less than "a value".
  buildNoViableAltMessage: ({ expectedPathsPerAlt, actual, ruleName }) =>
    `expected ${ruleName === 'expr' ? 'a value' : alternatives(expectedPathsPerAlt)} but found ${describeToken(actual[0])}`,
  buildEarlyExitMessage: ({ expectedIterationPaths, actual }) =>
    `expected ${alternatives([expectedIterationPaths])} but found ${describeToken(actual[0])}`,
};

export class McpParser extends CstParser {
  constructor() {
    super(T.allTokens, { recoveryEnabled: true, maxLookahead: 3, nodeLocationTracking: 'full', errorMessageProvider: messages });
    this.performSelfAnalysis();
  }

  /**
   * Chevrotain calls this for every syntax error. Recovering from each costs a thrown exception and a
   * message built from the grammar's lookahead paths (about 0.2 ms), so a megabyte of garbage took minutes;
   * past MAX_SYNTAX_ERRORS nothing more is reported anyway, so the parse stops there.
   */
  SAVE_ERROR(e: IRecognitionException): IRecognitionException {
    if (this.errors.length >= MAX_SYNTAX_ERRORS) throw new TooManySyntaxErrors(`more than ${MAX_SYNTAX_ERRORS} syntax errors`);
    return saveError.call(this, e);
  }

  file = this.RULE('file', () => {
    this.OPTION(() => this.SUBRULE(this.header));
    this.MANY(() => this.SUBRULE(this.topItem));
  });

  header = this.RULE('header', () => {
    this.CONSUME(T.Pipeline);
    this.CONSUME(T.Ident);
    this.OPTION(() => {
      this.CONSUME(T.Extends);
      this.CONSUME(T.StringLit);
    });
  });

  topItem = this.RULE('topItem', () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.decl) },
      { ALT: () => this.SUBRULE(this.stage) },
      { ALT: () => this.SUBRULE(this.exportItem) },
      { ALT: () => this.CONSUME(T.Semicolon) },
    ]);
  });

  decl = this.RULE('decl', () => {
    this.OPTION(() => this.CONSUME(T.Override));
    this.OR([
      { ALT: () => this.CONSUME(T.Model) },
      { ALT: () => this.CONSUME(T.Tokenizer) },
      { ALT: () => this.CONSUME(T.Data) },
      { ALT: () => this.CONSUME(T.Adapter) },
      { ALT: () => this.CONSUME(T.Probe) },
    ]);
    this.CONSUME(T.Ident);
    this.CONSUME(T.Equals);
    this.SUBRULE(this.expr);
    this.OPTION2(() => this.SUBRULE(this.placement));
  });

  placement = this.RULE('placement', () => {
    this.CONSUME(T.At);
    this.SUBRULE(this.selector);
    this.MANY(() => {
      this.CONSUME(T.Comma);
      this.SUBRULE2(this.selector);
    });
    this.OPTION(() => {
      this.CONSUME(T.Except);
      this.SUBRULE3(this.selector);
      this.MANY2(() => {
        this.CONSUME2(T.Comma);
        this.SUBRULE4(this.selector);
      });
    });
  });

  selector = this.RULE('selector', () => {
    this.SUBRULE(this.segment);
    this.MANY(() => {
      this.CONSUME(T.Dot);
      this.SUBRULE2(this.segment);
    });
  });

  segment = this.RULE('segment', () => {
    this.OR([
      {
        ALT: () => {
          this.CONSUME(T.Name);
          this.OPTION(() => this.SUBRULE(this.index));
        },
      },
      {
        ALT: () => {
          this.CONSUME(T.LBrace);
          this.CONSUME2(T.Name);
          this.MANY(() => {
            this.CONSUME(T.Comma);
            this.CONSUME3(T.Name);
          });
          this.CONSUME(T.RBrace);
        },
      },
      { ALT: () => this.CONSUME(T.Star) },
    ]);
  });

  index = this.RULE('index', () => {
    this.CONSUME(T.LBracket);
    this.OR([
      { ALT: () => this.CONSUME(T.Star) },
      {
        ALT: () => {
          this.SUBRULE(this.indexItem);
          this.MANY(() => {
            this.CONSUME(T.Comma);
            this.SUBRULE2(this.indexItem);
          });
        },
      },
    ]);
    this.CONSUME(T.RBracket);
  });

  indexItem = this.RULE('indexItem', () => {
    this.SUBRULE(this.signedNumber);
    this.OPTION(() => {
      this.CONSUME(T.DotDot);
      this.SUBRULE2(this.signedNumber);
    });
  });

  signedNumber = this.RULE('signedNumber', () => {
    this.OPTION(() => this.CONSUME(T.Minus));
    this.CONSUME(T.NumberLit);
  });

  stage = this.RULE('stage', () => {
    this.OPTION(() => this.CONSUME(T.Override));
    this.CONSUME(T.Stage);
    this.CONSUME(T.Ident);
    this.OPTION2(() => {
      this.CONSUME(T.After);
      this.CONSUME2(T.Ident);
    });
    this.CONSUME(T.LBrace);
    this.MANY(() => this.SUBRULE(this.stageItem));
    this.CONSUME(T.RBrace);
  });

  stageItem = this.RULE('stageItem', () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.decl) },
      { ALT: () => this.SUBRULE(this.train) },
      { ALT: () => this.SUBRULE(this.then) },
      { ALT: () => this.SUBRULE(this.constrain) },
      { ALT: () => this.SUBRULE(this.evalItem) },
      { ALT: () => this.SUBRULE(this.setting) },
      { ALT: () => this.CONSUME(T.Semicolon) },
    ]);
  });

  setting = this.RULE('setting', () => {
    this.CONSUME(T.Ident);
    this.SUBRULE(this.expr);
  });

  train = this.RULE('train', () => {
    this.CONSUME(T.Train);
    this.CONSUME(T.Ident);
    this.MANY(() => {
      this.CONSUME(T.Comma);
      this.CONSUME2(T.Ident);
    });
    this.OPTION(() => {
      this.CONSUME(T.On);
      this.CONSUME3(T.Ident);
      this.MANY2(() => {
        this.CONSUME2(T.Comma);
        this.CONSUME4(T.Ident);
      });
    });
  });

  then = this.RULE('then', () => {
    this.CONSUME(T.Then);
    this.CONSUME(T.LBrace);
    this.MANY(() =>
      this.OR([
        { ALT: () => this.SUBRULE(this.merge) },
        { ALT: () => this.SUBRULE(this.drop) },
        { ALT: () => this.SUBRULE(this.freeze) },
        { ALT: () => this.SUBRULE(this.unfreeze) },
        { ALT: () => this.CONSUME(T.Semicolon) },
      ]),
    );
    this.CONSUME(T.RBrace);
  });

  refList = this.RULE('refList', () => {
    this.SUBRULE(this.ref);
    this.MANY(() => {
      this.CONSUME(T.Comma);
      this.SUBRULE2(this.ref);
    });
  });

  ref = this.RULE('ref', () => {
    this.CONSUME(T.Ident);
    this.MANY(() => {
      this.CONSUME(T.Dot);
      this.CONSUME(T.Name);
    });
  });

  merge = this.RULE('merge', () => {
    this.CONSUME(T.Merge);
    this.SUBRULE(this.refList);
    this.CONSUME(T.Into);
    this.CONSUME(T.Ident);
  });

  drop = this.RULE('drop', () => {
    this.CONSUME(T.Drop);
    this.SUBRULE(this.refList);
    this.OPTION(() => {
      this.CONSUME(T.Where);
      this.SUBRULE(this.condition);
    });
  });

  freeze = this.RULE('freeze', () => {
    this.CONSUME(T.Freeze);
    this.SUBRULE(this.refList);
  });

  unfreeze = this.RULE('unfreeze', () => {
    this.CONSUME(T.Unfreeze);
    this.SUBRULE(this.refList);
  });

  condition = this.RULE('condition', () => {
    this.CONSUME(T.Name);
    this.OR([
      { ALT: () => this.CONSUME(T.Lt) },
      { ALT: () => this.CONSUME(T.Le) },
      { ALT: () => this.CONSUME(T.Gt) },
      { ALT: () => this.CONSUME(T.Ge) },
    ]);
    this.SUBRULE(this.expr);
  });

  constrain = this.RULE('constrain', () => {
    this.CONSUME(T.Constrain);
    this.SUBRULE(this.refOrCall);
    this.OPTION(() => {
      this.CONSUME(T.Weight);
      this.SUBRULE(this.expr);
    });
    this.OPTION2(() => {
      this.CONSUME(T.Norm);
      this.CONSUME(T.Ident);
    });
  });

  evalItem = this.RULE('evalItem', () => {
    this.CONSUME(T.Eval);
    this.CONSUME(T.Ident);
    this.MANY(() => {
      this.CONSUME(T.Comma);
      this.CONSUME2(T.Ident);
    });
    this.OPTION(() => {
      this.CONSUME(T.Every);
      this.SUBRULE(this.expr);
    });
  });

  exportItem = this.RULE('exportItem', () => {
    this.CONSUME(T.Export);
    this.CONSUME(T.Ident);
    this.MANY(() => {
      this.CONSUME2(T.Ident);
      this.OPTION(() => this.CONSUME(T.Comma));
    });
    this.CONSUME(T.StringLit);
  });

  expr = this.RULE('expr', () => {
    this.OR([
      { ALT: () => this.SUBRULE(this.signedNumber) },
      { ALT: () => this.CONSUME(T.Percent) },
      { ALT: () => this.CONSUME(T.Size) },
      { ALT: () => this.CONSUME(T.StringLit) },
      { ALT: () => this.CONSUME(T.True) },
      { ALT: () => this.CONSUME(T.False) },
      { ALT: () => this.SUBRULE(this.list) },
      { ALT: () => this.SUBRULE(this.refOrCall) },
    ]);
  });

  list = this.RULE('list', () => {
    this.CONSUME(T.LBracket);
    this.MANY_SEP({ SEP: T.Comma, DEF: () => this.SUBRULE(this.expr) });
    this.CONSUME(T.RBracket);
  });

  refOrCall = this.RULE('refOrCall', () => {
    this.SUBRULE(this.ref);
    this.OPTION(() => {
      this.CONSUME(T.LParen);
      this.MANY_SEP({ SEP: T.Comma, DEF: () => this.SUBRULE(this.arg) });
      this.CONSUME(T.RParen);
    });
  });

  arg = this.RULE('arg', () => {
    this.OPTION(() => {
      this.CONSUME(T.Name);
      this.CONSUME(T.Colon);
    });
    this.SUBRULE(this.expr);
  });
}

/** One parser instance serves every file: chevrotain parsers are reusable once analysed. */
export const parser = new McpParser();
