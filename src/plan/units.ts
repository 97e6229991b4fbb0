/** Human-readable sizes for messages, `mcpc explain` and the runtime's (shared by compiler and runtime). */

/** Bytes in binary units: `512 B`, `1.5 KiB`, `147.7 MiB`, `71.1 GiB`. */
export function fmtBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}
