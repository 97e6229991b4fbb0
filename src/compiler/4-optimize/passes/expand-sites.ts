/**
 * expand-sites (required): every `adapted_linear` becomes explicit ops, in the reference formulation of
 * the MedCare code:
 *   y = linear(x, W, b) + Σ_lora s·lora_up(lora_down(x, A), B)
 *       + gate_combine(topk_gate(router(x)), [s·expert_up(expert_down(x, A_e), B_e) for every expert e])
 * Every routed expert runs on every token here; `batch-experts` makes that sparse. Trained mixtures with
 * a load-balancing weight add their auxiliary term to the loss.
 * Contract: after this pass no `adapted_linear` remains; shapes are explicit on every value.
 */
import type { LiveAdapter } from '../../3-lower/index.js';
import { GraphEditor } from '../../ir/edit.js';
import type { Node } from '../../ir/types.js';
import type { Pass } from '../pass.js';

export const expandSites: Pass = {
  name: 'expand-sites',
  description: 'expand each adapted linear into base GEMM, LoRA and mixture-of-experts ops; infer shapes',
  required: true,
  run(ir) {
    let changes = 0;
    for (const st of ir.stages) {
      const ed = new GraphEditor(st.graph);
      const lossSum = st.graph.nodes.find((n) => n.op === 'loss_sum')!;
      for (const n of [...st.graph.nodes]) {
        if (n.op !== 'adapted_linear') continue;
        changes++;
        const x = n.inputs[0];
        const out = n.outputs[0];
        const { in: inF, out: outF, weight, bias } = n.attrs as { in: number; out: number; weight: string; bias?: string };
        const ads = n.attrs.adapters as LiveAdapter[];
        const site = n.site!;
        const extra = { site, ...(n.layer !== undefined ? { layer: n.layer } : {}) };
        const nodes: Node[] = [];
        const terms: string[] = [];
        const y0 = ads.length ? ed.value(`${site}.base`, ['T', outF]) : out;
        nodes.push(ed.node('linear', [x, weight, ...(bias ? [bias] : [])], [y0], { in: inF, out: outF }, extra));
        terms.push(y0);
        for (const a of ads) {
          const ax = { ...extra, adapter: a.name };
          const lora = (A: string, B: string, rank: number, tag: string) => {
            const h = ed.value(`${site}.${a.name}.${tag}h`, ['T', rank]);
            const y = ed.value(`${site}.${a.name}.${tag}y`, ['T', outF]);
            nodes.push(ed.node('lora_down', [x, A], [h], { in: inF, rank }, ax));
            nodes.push(ed.node('lora_up', [h, B], [y], { rank, out: outF, scale: a.scale }, ax));
            terms.push(y);
          };
          if (a.type === 'lora') {
            lora(a.params.A, a.params.B, a.rank * a.experts, '');
            continue;
          }
          if (a.params.shared_A) lora(a.params.shared_A, a.params.shared_B, a.rank * a.shared, 'shared.');
          if (!a.params.expert_A) continue;
          const probs = ed.value(`${site}.${a.name}.probs`, ['T', a.experts]);
          const gates = ed.value(`${site}.${a.name}.gates`, ['T', a.experts]);
          nodes.push(ed.node('router', [x, a.params.router_W, a.params.router_b], [probs], { in: inF, experts: a.experts, activation: a.router }, ax));
          nodes.push(ed.node('topk_gate', [probs], [gates], { experts: a.experts, k: a.topK, renormalize: a.renormalize }, ax));
          const ys: string[] = [];
          for (let e = 0; e < a.experts; e++) {
            const h = ed.value(`${site}.${a.name}.e${e}.h`, ['T', a.rank]);
            const y = ed.value(`${site}.${a.name}.e${e}.y`, ['T', outF]);
            nodes.push(ed.node('expert_down', [x, a.params.expert_A], [h], { in: inF, rank: a.rank, expert: e }, ax));
            nodes.push(ed.node('expert_up', [h, a.params.expert_B], [y], { rank: a.rank, out: outF, expert: e, scale: a.scale }, ax));
            ys.push(y);
          }
          const ym = ed.value(`${site}.${a.name}.moe`, ['T', outF]);
          nodes.push(ed.node('gate_combine', [gates, ...ys], [ym], { experts: a.experts, out: outF }, ax));
          terms.push(ym);
          if (a.loadBalance > 0 && a.state === 'trainable') {
            const lb = ed.value(`balance.${a.name}.${site}`, []);
            nodes.push(ed.node('load_balance', [probs, gates], [lb], { experts: a.experts, k: a.topK }, ax));
            lossSum.inputs.push(lb);
            (lossSum.attrs.weights as number[]).push(a.loadBalance);
          }
        }
        // Sum the terms left to right; the last add writes the site's output value.
        let acc = terms[0];
        for (let i = 1; i < terms.length; i++) {
          const o = i === terms.length - 1 ? out : ed.value(`${site}.sum${i}`, ['T', outF]);
          nodes.push(ed.node('add', [acc, terms[i]], [o], {}, extra));
          acc = o;
        }
        ed.replace(n, nodes);
      }
      // The loss_sum must come after every term it reads.
      st.graph.nodes = [...st.graph.nodes.filter((n) => n !== lossSum), lossSum];
    }
    return { changes, notes: [`${changes} linear sites expanded`] };
  },
};
