// File helpers shared by the corpus and bench-text builders.
import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

const decoder = new TextDecoder("utf-8", { fatal: true });

// Appends to `files` every regular file under `dir` that `filter` accepts, in name order.
export function walk(dir, files, filter) {
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, files, filter);
    else if (e.isFile() && filter(p)) files.push(p);
  }
}

// The UTF-8 text of a file (gunzipped when it ends in .gz), or null when it is unreadable,
// empty, binary (holds a NUL) or not valid UTF-8.
export function readText(p) {
  let buf;
  try {
    buf = fs.readFileSync(p);
    if (p.endsWith(".gz")) buf = zlib.gunzipSync(buf);
  } catch {
    return null;
  }
  if (buf.length === 0 || buf.includes(0)) return null;
  try {
    return decoder.decode(buf);
  } catch {
    return null;
  }
}
