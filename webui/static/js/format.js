// Presenting raw stream bytes: UTF-8 detection and a classic hex dump.

const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** The bytes as text when they are valid UTF-8 without control characters, else null. */
export function asText(bytes, { cut = false } = {}) {
  try {
    // `cut`: the bytes are the start of more, which may end inside a character.
    const text = cut ? new TextDecoder("utf-8", { fatal: true }).decode(bytes, { stream: true }) : UTF8.decode(bytes);
    return /[\u0000-\u0008\u000e-\u001f\u007f]/.test(text) ? null : text;
  } catch {
    return null;
  }
}

/** "00000000  48 65 6c 6c 6f ...  |Hello...|" lines, starting at byte `base`. */
export function hexDump(bytes, base = 0, limit = 64 * 1024) {
  const lines = [];
  const end = Math.min(bytes.length, limit);
  for (let at = 0; at < end; at += 16) {
    const row = bytes.subarray(at, Math.min(at + 16, end));
    const hex = [...row].map((b) => b.toString(16).padStart(2, "0"));
    const left = hex.slice(0, 8).join(" ");
    const right = hex.slice(8).join(" ");
    const ascii = [...row].map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${(base + at).toString(16).padStart(8, "0")}  ${left.padEnd(23)}  ${right.padEnd(23)}  |${ascii}|`);
  }
  if (bytes.length > end) lines.push(`… ${bytes.length - end} more bytes`);
  return lines.join("\n");
}
