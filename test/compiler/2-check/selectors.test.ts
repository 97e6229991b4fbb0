/**
 * Placement selectors against the module tree of a built-in model (qwen2-micro with 6 layers: hidden 64,
 * 4 heads of 16, 2 key/value heads, ffn 176).
 */
import { describe, expect, it } from 'vitest';
import { checkText, pipeline } from './helpers.js';

const model = 'builtin("qwen2-micro", layers: 6)';

/** Check one adapter placed `at <placement>`; returns its sites (selector paths) and the diagnostics. */
function place(placement: string) {
  const r = checkText(pipeline(`adapter a = lora(r: 4) at ${placement}\nstage s { train a on d }`, model));
  const a = r.pipeline?.adapters.find((x) => x.name === 'a');
  return { sites: a?.sites.map((s) => s.path) ?? [], codes: r.codes, diagnostics: r.diagnostics, adapter: a };
}

describe('selectors', () => {
  it('index ranges are inclusive at both ends', () => {
    expect(place('layers[1..3].attn.q').sites).toEqual(['layers[1].attn.q', 'layers[2].attn.q', 'layers[3].attn.q']);
  });

  it('negative indices count from the end', () => {
    expect(place('layers[-1].mlp.down').sites).toEqual(['layers[5].mlp.down']);
    expect(place('layers[-2..-1].attn.o').sites).toEqual(['layers[4].attn.o', 'layers[5].attn.o']);
    expect(place('layers[0..-5].attn.o').sites).toEqual(['layers[0].attn.o', 'layers[1].attn.o']);
  });

  it('index lists mix single indices and ranges, in tree order without duplicates', () => {
    expect(place('layers[4..5, 0, 2, 5].attn.v').sites).toEqual(['layers[0].attn.v', 'layers[2].attn.v', 'layers[4].attn.v', 'layers[5].attn.v']);
  });

  it('`[*]` takes every layer and a set takes several children', () => {
    const r = place('layers[*].mlp.{gate, up}');
    expect(r.codes).toEqual([]);
    expect(r.sites).toHaveLength(12);
    expect(r.sites.slice(0, 3)).toEqual(['layers[0].mlp.gate', 'layers[0].mlp.up', 'layers[1].mlp.gate']);
  });

  it('`*` takes every child, skipping the norms it meets', () => {
    expect(place('layers[0].attn.*').sites).toEqual(['layers[0].attn.q', 'layers[0].attn.k', 'layers[0].attn.v', 'layers[0].attn.o']);
    const r = place('layers[0].*');
    expect(r.codes).toEqual([]);
    expect(r.sites).toEqual(['layers[0].attn.q', 'layers[0].attn.k', 'layers[0].attn.v', 'layers[0].attn.o', 'layers[0].mlp.gate', 'layers[0].mlp.up', 'layers[0].mlp.down']);
  });

  it('a selector that ends on a container means every linear module below it', () => {
    expect(place('layers[2].mlp').sites).toEqual(['layers[2].mlp.gate', 'layers[2].mlp.up', 'layers[2].mlp.down']);
    expect(place('layers[5]').sites).toHaveLength(7);
    expect(place('layers[*]').sites).toHaveLength(42);
  });

  it('`except` removes what its selectors match', () => {
    const r = place('layers[*].attn.{q, k, v, o} except layers[0].attn.{q, k}, layers[-1]');
    expect(r.codes).toEqual([]);
    expect(r.sites).toHaveLength(24 - 2 - 4);
    expect(r.sites).not.toContain('layers[0].attn.q');
    expect(r.sites).toContain('layers[0].attn.v');
    expect(r.sites.some((s) => s.startsWith('layers[5]'))).toBe(false);
  });

  it('several selectors are united, in tree order', () => {
    expect(place('lm_head, layers[0].attn.q').sites).toEqual(['layers[0].attn.q', 'lm_head']);
  });

  it('sites carry the shapes and the Hugging Face names', () => {
    const a = place('layers[3].attn.{q, k}, layers[3].mlp.down, lm_head').adapter!;
    expect(a.sites).toEqual([
      { path: 'layers[3].attn.q', hfName: 'model.layers.3.self_attn.q_proj', in: 64, out: 64 },
      { path: 'layers[3].attn.k', hfName: 'model.layers.3.self_attn.k_proj', in: 64, out: 32 },
      { path: 'layers[3].mlp.down', hfName: 'model.layers.3.mlp.down_proj', in: 176, out: 64 },
      { path: 'lm_head', hfName: 'lm_head', in: 64, out: 256 },
    ]);
  });

  describe('errors', () => {
    it('an index past the last layer', () => {
      const r = place('layers[6].attn.q');
      expect(r.codes).toEqual(['selector_index_out_of_range']);
      expect(r.diagnostics[0].message).toBe('`layers` has 6 entries (0..5); 6 is out of range');
    });

    it('a range reaching past the end, and a negative index before the start', () => {
      expect(place('layers[4..6].attn.q').codes).toEqual(['selector_index_out_of_range']);
      expect(place('layers[-7].attn.q').codes).toEqual(['selector_index_out_of_range']);
    });

    it('a descending range is empty', () => {
      const r = place('layers[3..1].attn.q');
      expect(r.codes).toEqual(['selector_index_out_of_range']);
      expect(r.diagnostics[0].message).toBe('the range 3..1 is empty');
    });

    it('indexing a module that is not a list', () => {
      const r = place('layers[0].attn[0].q');
      expect(r.codes).toEqual(['selector_matches_nothing']);
      expect(r.diagnostics[0].message).toBe('`layers[0].attn` is not a list and cannot be indexed');
    });

    it('a list used without an index', () => {
      const r = place('layers.attn.q');
      expect(r.codes).toEqual(['selector_matches_nothing']);
      expect(r.diagnostics[0].hint).toBe('`layers` is a list of 6: index it first, e.g. `layers[*].attn`');
    });

    it('an unknown module, with a suggestion', () => {
      const r = place('layers[*].atn.q');
      expect(r.codes).toEqual(['selector_matches_nothing']);
      expect(r.diagnostics[0].message).toBe('`layers[*]` has no module `atn`');
      expect(r.diagnostics[0].hint).toBe('did you mean `attn`?');
    });

    it('Hugging Face module names, reported once for the whole set', () => {
      const r = place('layers[*].self_attn.q_proj');
      expect(r.codes).toEqual(['selector_matches_nothing']);
      expect(r.diagnostics[0].hint).toBe('this is the Hugging Face checkpoint name; selectors use `attn`');
      const s = place('layers[0].mlp.{gate_proj, up}');
      expect(s.diagnostics.map((d) => d.message)).toEqual(['`layers[0].mlp` has no module `gate_proj`']);
    });

    it('exclusions that remove everything', () => {
      const r = place('layers[0].attn.q except layers[*].attn');
      expect(r.codes).toEqual(['selector_matches_nothing']);
      expect(r.diagnostics[0].message).toBe('after `except`, `layers[0].attn.q except layers[*].attn` matches no module');
    });

    it('norms and the embedding are not linear projections', () => {
      expect(place('layers[*].input_norm').diagnostics.map((d) => [d.code, d.message])).toEqual([
        ['invalid_placement', '`layers[*].input_norm` is a norm, not a linear projection; adapters attach to linear modules'],
      ]);
      expect(place('layers[2].post_norm').codes).toEqual(['invalid_placement']);
      expect(place('norm').codes).toEqual(['invalid_placement']);
      expect(place('embed').diagnostics[0].message).toBe('`embed` is an embedding, not a linear projection; adapters attach to linear modules');
    });

    it('an adapter without a placement', () => {
      const r = checkText(pipeline('adapter a = lora(r: 4)\nstage s { train a on d }'));
      expect(r.codes).toEqual(['invalid_placement']);
    });
  });
});
