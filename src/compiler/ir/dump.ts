/** A readable text dump of the IR (MCPC_DEBUG=ir): one line per node, per stage. */
import type { IR } from './types.js';

export function dumpIR(ir: IR): string {
  const out: string[] = [];
  for (const st of ir.stages) {
    out.push(`stage ${st.name}: ${st.graph.nodes.length} nodes, loss ${st.graph.loss}`);
    for (const t of st.entry) out.push(`  entry ${t.op} ${t.adapter}`);
    for (const n of st.graph.nodes) {
      const attrs = Object.entries(n.attrs)
        .filter(([k, v]) => k !== 'adapters' && (typeof v !== 'object' || v === null))
        .map(([k, v]) => `${k}=${v}`)
        .join(' ');
      out.push(`  ${n.id} ${n.outputs.join(', ')} = ${n.op}(${n.inputs.join(', ')})${attrs ? ` {${attrs}}` : ''}`);
    }
    for (const t of st.exit) out.push(`  exit ${t.op} ${t.adapter}`);
  }
  return out.join('\n');
}
