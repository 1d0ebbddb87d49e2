// Colours the code of a fenced block by the kind of each token: keywords, strings, comments,
// numbers and literal constants, for the languages models write most. A scanner, not a
// parser: it needs no closing quote, takes time linear in the text, and shows every character
// of the source once, in order, whatever it meets.

/** Longer blocks are shown plain: laying out this many characters in coloured runs takes a
 * frame or two (50 ms in Chromium here), and the page may hold many. */
export const HIGHLIGHT_MAX_CHARS = 20_000;

const words = (text) => new Set(text.split(/\s+/).filter(Boolean));

const C_FAMILY_KEYWORDS = `
  abstract as async await auto break case catch char class const constexpr continue crate
  default defer delete do double dyn else enum explicit export extends extern final finally
  float fn for func go goto if impl implements import in inline instanceof int interface let
  long loop match mod module move mut namespace new noexcept operator override package private
  protected pub public readonly ref return select short signed sizeof static struct super
  switch synchronized template this throw throws trait try type typedef typename union unsafe
  unsigned use using val var virtual void volatile when where while yield`;

const LANGUAGES = new Map();

// Pieces of the scanners' patterns. None may backtrack over more than one ambiguous run: the
// text is untrusted, and a long run of one character must not make a frame slow.
const ONE_LINE = (q) => `${q}(?:[^${q}\\\\\\n]|\\\\[\\s\\S])*${q}?`; // ends at its line's end if open
const MULTILINE = (q) => `${q}(?:[^${q}\\\\]|\\\\[\\s\\S])*${q}?`;
const TRIPLE = (q) => `${q}{3}(?:[^\\\\]|\\\\[\\s\\S])*?(?:${q}{3}|$)`;
const BLOCK_COMMENT = "/\\*[\\s\\S]*?(?:\\*/|$)";
const LINE_COMMENT = (open) => `${open}[^\\n]*`;
const NUMBER = "(?:0[xX][\\da-fA-F_]+|0[bB][01_]+|\\d[\\d_]*(?:\\.\\d[\\d_]*)?|\\.\\d[\\d_]*)(?:[eE][+-]?\\d+)?[A-Za-z]*";

/**
 * A language: its comments and strings as patterns (each alternative of one group: the first
 * that matches at a place wins, so a longer opening goes first), its keywords and literals.
 * Ordinary names are no match: the engine passes over them without a step of ours.
 */
function define(aliases, { comments = [], strings = [], keywords = "", literals = "", ignoreCase = false }) {
  const oneOf = (list) => {
    const names = [...words(list)];
    return names.length ? `(?<![\\w$])(?:${names.join("|")})(?![\\w$])` : "(?!)";
  };
  const groups = [comments.join("|") || "(?!)", strings.join("|") || "(?!)",
    `(?<![\\w$])${NUMBER}`, oneOf(keywords), oneOf(literals)];
  const pattern = new RegExp(groups.map((g) => `(${g})`).join("|"), ignoreCase ? "gi" : "g");
  for (const alias of aliases) LANGUAGES.set(alias, pattern);
}

define(["python", "py", "python3", "py3", "pycon"], {
  comments: [LINE_COMMENT("#")],
  strings: [TRIPLE('"'), TRIPLE("'"), ONE_LINE('"'), ONE_LINE("'")],
  keywords: `and as assert async await break case class continue def del elif else except
    finally for from global if import in is lambda match nonlocal not or pass raise return try
    while with yield`,
  literals: "True False None self cls",
});
define(["javascript", "js", "jsx", "mjs", "cjs", "typescript", "ts", "tsx", "node"], {
  comments: [LINE_COMMENT("//"), BLOCK_COMMENT],
  strings: [ONE_LINE('"'), ONE_LINE("'"), MULTILINE("`")],
  keywords: `abstract as async await break case catch class const continue debugger declare
    default delete do else enum export extends finally for from function get if implements
    import in instanceof interface keyof let namespace new of private protected public readonly
    return satisfies set static super switch throw try type typeof var void while with yield`,
  literals: "true false null undefined NaN Infinity this",
});
define(["json", "jsonc", "json5"], {
  comments: [LINE_COMMENT("//"), BLOCK_COMMENT],
  strings: [ONE_LINE('"')],
  literals: "true false null",
});
define(["bash", "sh", "shell", "zsh", "console", "shell-session", "shellscript"], {
  comments: [`(?<!\\S)${LINE_COMMENT("#")}`], // `$#` and `a#b` are not comments
  strings: [MULTILINE('"'), "'[^']*'?"], // nothing escapes a quote in single quotes
  keywords: `case do done elif else esac export fi for function if in local readonly return
    select then until while`,
  literals: "true false",
});
define(["sql", "sqlite", "postgresql", "postgres", "mysql", "plsql"], {
  comments: [LINE_COMMENT("--"), BLOCK_COMMENT],
  strings: [ONE_LINE("'"), ONE_LINE('"')],
  ignoreCase: true,
  keywords: `add all alter and as asc begin between by case check column commit constraint
    create default delete desc distinct drop else end exists foreign from group having if in
    index inner insert into is join key left like limit not offset on or order outer primary
    references replace returning right rollback select set table then transaction union unique
    update using values view when where with`,
  literals: "null true false",
});
define(["c", "h", "cpp", "c++", "cc", "cxx", "hpp", "java", "go", "golang", "rust", "rs",
  "csharp", "cs", "c#", "kotlin", "kt", "swift", "scala", "dart", "php"], {
  comments: [LINE_COMMENT("//"), BLOCK_COMMENT],
  strings: [ONE_LINE('"'), ONE_LINE("'")],
  keywords: C_FAMILY_KEYWORDS,
  literals: "true false null nil nullptr NULL None Some Ok Err self Self",
});

/** Whether `lang` (a fence's info word) names a language this module colours. */
export function highlights(lang) {
  return LANGUAGES.has(String(lang).toLowerCase());
}

/**
 * The tokens of `text` as [kind, text] pairs, kind one of "comment", "string", "number",
 * "keyword", "literal", or null for the rest. Joined, their texts are `text` exactly.
 */
export function tokenize(text, lang) {
  const pattern = LANGUAGES.get(String(lang).toLowerCase());
  if (!pattern) return [[null, text]];
  const tokens = [];
  let plainFrom = 0;
  pattern.lastIndex = 0;
  for (let m = pattern.exec(text); m; m = pattern.exec(text)) {
    if (m[0] === "") { // cannot happen with these patterns; never loop on one place
      pattern.lastIndex += 1;
      continue;
    }
    const kind = m[1] !== undefined ? "comment" : m[2] !== undefined ? "string"
      : m[3] !== undefined ? "number" : m[4] !== undefined ? "keyword" : "literal";
    if (m.index > plainFrom) tokens.push([null, text.slice(plainFrom, m.index)]);
    tokens.push([kind, m[0]]);
    plainFrom = m.index + m[0].length;
  }
  if (plainFrom < text.length) tokens.push([null, text.slice(plainFrom)]);
  return tokens;
}

/** Fill `code` with `text`, coloured for `lang` where it can be. */
export function renderHighlighted(code, text, lang) {
  if (text.length > HIGHLIGHT_MAX_CHARS || !highlights(lang)) {
    code.textContent = text;
    return;
  }
  for (const [kind, part] of tokenize(text, lang)) {
    if (kind === null) {
      code.append(part);
    } else {
      const span = document.createElement("span");
      span.className = `tok-${kind}`;
      span.textContent = part;
      code.append(span);
    }
  }
}
