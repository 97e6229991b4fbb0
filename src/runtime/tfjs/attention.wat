;; Attention for the CPU kernel table (through ./attention.ts and ../kernels/cpu-attention.ts), forward and
;; backward, flash-attention style and only over the keys a query can see: query i of a row sees the keys
;; [lo_i, hi_i) given by the range table (its segment's run; hi_i = i + 1 when causal), so the masked
;; scores of packed rows are never computed. WebAssembly SIMD (f32x4) along the keys: the keys and values
;; of a (row, kv head) are stored transposed, [d][Sp] (Sp >= S + 16, the columns past S zero), so the scores
;; of 16 keys are four f32x4 accumulators updated by one splatted query element per head dimension; any d.
;;
;; One call runs one (row, query head) over all S queries; all addresses are byte offsets into this
;; module's memory, all arrays f32 unless said otherwise:
;;   q, o, dout, dq   token i of this row and head at q + i·ldq·4 ([d] each; ldq = H·d)
;;   kt, vt, dkt, dvt this row's kv head, transposed: element (c, j) at kt + (c·Sp + j)·4
;;   st               fwd_head writes (m_i, 1/l_i) of query i at st + i·ldst·4: the maximum of its scaled
;;                    scores and 1 / Σ_j exp(s_ij − m_i); bwd_head reads the logsumexp L_i = m_i + log l_i
;;                    (attention.ts forms it; WebAssembly has no log) at st + i·ldst·4
;;   rng              i32 pairs (lo_i, hi_i), lo_i < hi_i (the query always sees itself)
;;   sc               scratch, 2·Sp floats
;;
;;   fwd_head   s_j = scale·q·k_j (16 keys at a time, lanes past hi masked to −∞), m = max, p_j = exp(s_j − m)
;;              (lanes past hi zeroed), o[c] = Σ_j p_j·v_j[c] / Σ_j p_j, st = (m, 1/l)
;;   bwd_head   P_j = exp(s_j − L) recomputed from q and k; dP_j = dO·v_j; D = dO·o; dS_j = P_j·(dP_j − D)·scale;
;;              dvt[c][j] += P_j·dO[c], dkt[c][j] += dS_j·q[c], dq[c] = Σ_j dS_j·k_j[c]  (dkt, dvt zeroed by
;;              the caller and accumulated over the query heads sharing the kv head)
;;
;; exp's argument is never below −87 (s_j − m, s_j − L <= 0): where it would be (the masked lanes, −∞, and
;; keys over 87 below the maximum) P is set to 0 instead, so no denormal is ever formed. Denormal arithmetic
;; is ~100x slower on x86, and the masked lanes of every block's tail would otherwise produce them. The
;; reference's weights there are below e^−87 ≈ 1.6e−38 of the largest, which the sum cannot tell from 0.
;;
;;   to_t(src, ld, S, d, dst, Sp)     dst[c·Sp + j] = src[j·ld + c] (c < d, j < S), dst[c·Sp + j] = 0 for S <= j < Sp
;;   from_t(src, Sp, S, d, dst, ld)   dst[j·ld + c] = src[c·Sp + j]: a kv head's block in and out of the layout above
;;
;; exp is the Cephes-style f32x4 polynomial of ../kernels/fused-wasm.ts (same constants; 1-2 ulp).
(module
  (memory (export "memory") 1)

  (func $hsum (param $a v128) (result f32)
    (local.set $a (f32x4.add (local.get $a) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $a) (local.get $a))))
    (f32.add (f32x4.extract_lane 0 (local.get $a)) (f32x4.extract_lane 1 (local.get $a))))

  (func $hmax (param $a v128) (result f32)
    (local.set $a (f32x4.max (local.get $a) (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $a) (local.get $a))))
    (f32.max (f32x4.extract_lane 0 (local.get $a)) (f32x4.extract_lane 1 (local.get $a))))

  ;; exp(x): n = round(x·log2 e), r = x − n·ln 2 (two parts), degree-6 polynomial, 2^n as two factors.
  (func $exp (param $x v128) (result v128)
    (local $n v128) (local $r v128) (local $p v128) (local $i v128) (local $a v128)
    (local.set $x (f32x4.min (f32x4.max (local.get $x) (v128.const f32x4 -104 -104 -104 -104)) (v128.const f32x4 89 89 89 89)))
    (local.set $n (f32x4.nearest (f32x4.mul (local.get $x)
      (v128.const f32x4 1.44269504088896341 1.44269504088896341 1.44269504088896341 1.44269504088896341))))
    (local.set $r (f32x4.sub
      (f32x4.sub (local.get $x) (f32x4.mul (local.get $n) (v128.const f32x4 0.693359375 0.693359375 0.693359375 0.693359375)))
      (f32x4.mul (local.get $n) (v128.const f32x4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4 -2.12194440e-4))))
    (local.set $p (f32x4.mul (v128.const f32x4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4 1.9875691500e-4) (local.get $r)))
    (local.set $p (f32x4.mul (f32x4.add (local.get $p) (v128.const f32x4 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3 1.3981999507e-3)) (local.get $r)))
    (local.set $p (f32x4.mul (f32x4.add (local.get $p) (v128.const f32x4 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3 8.3334519073e-3)) (local.get $r)))
    (local.set $p (f32x4.mul (f32x4.add (local.get $p) (v128.const f32x4 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2 4.1665795894e-2)) (local.get $r)))
    (local.set $p (f32x4.mul (f32x4.add (local.get $p) (v128.const f32x4 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1 1.6666665459e-1)) (local.get $r)))
    (local.set $p (f32x4.mul (f32x4.add (local.get $p) (v128.const f32x4 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1 5.0000001201e-1)) (local.get $r)))
    (local.set $p (f32x4.add (f32x4.add (f32x4.mul (local.get $p) (local.get $r)) (local.get $r)) (v128.const f32x4 1 1 1 1)))
    (local.set $i (i32x4.trunc_sat_f32x4_s (local.get $n)))
    (local.set $a (i32x4.shr_s (local.get $i) (i32.const 1)))
    (f32x4.mul
      (f32x4.mul (local.get $p) (i32x4.shl (i32x4.add (local.get $a) (v128.const i32x4 127 127 127 127)) (i32.const 23)))
      (i32x4.shl (i32x4.add (i32x4.sub (local.get $i) (local.get $a)) (v128.const i32x4 127 127 127 127)) (i32.const 23))))

  (func (export "to_t") (param $src i32) (param $ld i32) (param $S i32) (param $d i32) (param $dst i32) (param $Sp i32)
    (local $j i32) (local $c i32) (local $s i32) (local $t i32) (local $sp4 i32)
    (local.set $sp4 (i32.shl (local.get $Sp) (i32.const 2)))
    (loop $row
      (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul (local.get $j) (local.get $ld)) (i32.const 2))))
      (local.set $t (i32.add (local.get $dst) (i32.shl (local.get $j) (i32.const 2))))
      (local.set $c (local.get $d))
      (loop $col
        (f32.store (local.get $t) (f32.load (local.get $s)))
        (local.set $s (i32.add (local.get $s) (i32.const 4)))
        (local.set $t (i32.add (local.get $t) (local.get $sp4)))
        (br_if $col (local.tee $c (i32.sub (local.get $c) (i32.const 1)))))
      (br_if $row (i32.lt_s (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $S))))
    (local.set $c (i32.const 0))
    (loop $pad
      (local.set $j (local.get $S))
      (local.set $t (i32.add (local.get $dst) (i32.mul (local.get $c) (local.get $sp4))))
      (loop $z
        (f32.store (i32.add (local.get $t) (i32.shl (local.get $j) (i32.const 2))) (f32.const 0))
        (br_if $z (i32.lt_s (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $Sp))))
      (br_if $pad (i32.lt_s (local.tee $c (i32.add (local.get $c) (i32.const 1))) (local.get $d)))))

  (func (export "from_t") (param $src i32) (param $Sp i32) (param $S i32) (param $d i32) (param $dst i32) (param $ld i32)
    (local $j i32) (local $c i32) (local $s i32) (local $t i32) (local $sp4 i32)
    (local.set $sp4 (i32.shl (local.get $Sp) (i32.const 2)))
    (loop $row
      (local.set $t (i32.add (local.get $dst) (i32.shl (i32.mul (local.get $j) (local.get $ld)) (i32.const 2))))
      (local.set $s (i32.add (local.get $src) (i32.shl (local.get $j) (i32.const 2))))
      (local.set $c (local.get $d))
      (loop $col
        (f32.store (local.get $t) (f32.load (local.get $s)))
        (local.set $t (i32.add (local.get $t) (i32.const 4)))
        (local.set $s (i32.add (local.get $s) (local.get $sp4)))
        (br_if $col (local.tee $c (i32.sub (local.get $c) (i32.const 1)))))
      (br_if $row (i32.lt_s (local.tee $j (i32.add (local.get $j) (i32.const 1))) (local.get $S)))))

  (func (export "fwd_head")
    (param $S i32) (param $Sp i32) (param $ldq i32) (param $d i32) (param $scale f32)
    (param $q i32) (param $kt i32) (param $vt i32) (param $o i32) (param $st i32) (param $ldst i32)
    (param $rng i32) (param $sc i32)
    (local $i i32) (local $lo i32) (local $n i32) (local $n16 i32) (local $jb i32) (local $c i32)
    (local $kb i32) (local $vb i32) (local $cp i32) (local $qc i32) (local $p i32) (local $sp4 i32) (local $ldq4 i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128) (local $x v128)
    (local $mx v128) (local $jv v128) (local $nv v128) (local $sv v128) (local $mv v128) (local $sum v128)
    (local $m f32) (local $inv f32)
    (local.set $sp4 (i32.shl (local.get $Sp) (i32.const 2)))
    (local.set $ldq4 (i32.shl (local.get $ldq) (i32.const 2)))
    (local.set $sv (f32x4.splat (local.get $scale)))
    (loop $tok
      (local.set $lo (i32.load (local.get $rng)))
      (local.set $n (i32.sub (i32.load offset=4 (local.get $rng)) (local.get $lo)))
      (local.set $n16 (i32.and (i32.add (local.get $n) (i32.const 15)) (i32.const -16)))
      (local.set $kb (i32.add (local.get $kt) (i32.shl (local.get $lo) (i32.const 2))))
      (local.set $vb (i32.add (local.get $vt) (i32.shl (local.get $lo) (i32.const 2))))
      (local.set $nv (i32x4.splat (local.get $n)))

      ;; scores of 16 keys at a time, masked to −∞ past n; their maximum
      (local.set $mx (v128.const f32x4 -inf -inf -inf -inf))
      (local.set $jv (v128.const i32x4 0 1 2 3))
      (local.set $jb (i32.const 0))
      (loop $s16
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $cp (i32.add (local.get $kb) (i32.shl (local.get $jb) (i32.const 2))))
        (local.set $qc (local.get $q))
        (local.set $c (local.get $d))
        (loop $dot
          (local.set $x (v128.load32_splat (local.get $qc)))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $x) (v128.load (local.get $cp)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $x) (v128.load offset=16 (local.get $cp)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $x) (v128.load offset=32 (local.get $cp)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $x) (v128.load offset=48 (local.get $cp)))))
          (local.set $qc (i32.add (local.get $qc) (i32.const 4)))
          (local.set $cp (i32.add (local.get $cp) (local.get $sp4)))
          (br_if $dot (local.tee $c (i32.sub (local.get $c) (i32.const 1)))))
        (local.set $p (i32.add (local.get $sc) (i32.shl (local.get $jb) (i32.const 2))))
        (local.set $a0 (v128.bitselect (f32x4.mul (local.get $a0) (local.get $sv)) (v128.const f32x4 -inf -inf -inf -inf) (i32x4.lt_s (local.get $jv) (local.get $nv))))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $a1 (v128.bitselect (f32x4.mul (local.get $a1) (local.get $sv)) (v128.const f32x4 -inf -inf -inf -inf) (i32x4.lt_s (local.get $jv) (local.get $nv))))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $a2 (v128.bitselect (f32x4.mul (local.get $a2) (local.get $sv)) (v128.const f32x4 -inf -inf -inf -inf) (i32x4.lt_s (local.get $jv) (local.get $nv))))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $a3 (v128.bitselect (f32x4.mul (local.get $a3) (local.get $sv)) (v128.const f32x4 -inf -inf -inf -inf) (i32x4.lt_s (local.get $jv) (local.get $nv))))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (v128.store (local.get $p) (local.get $a0))
        (v128.store offset=16 (local.get $p) (local.get $a1))
        (v128.store offset=32 (local.get $p) (local.get $a2))
        (v128.store offset=48 (local.get $p) (local.get $a3))
        (local.set $mx (f32x4.max (local.get $mx)
          (f32x4.max (f32x4.max (local.get $a0) (local.get $a1)) (f32x4.max (local.get $a2) (local.get $a3)))))
        (br_if $s16 (i32.lt_s (local.tee $jb (i32.add (local.get $jb) (i32.const 16))) (local.get $n))))

      ;; p = exp(s − m), zero past n; l = Σ p
      (local.set $mv (f32x4.splat (local.tee $m (call $hmax (local.get $mx)))))
      (local.set $sum (v128.const i32x4 0 0 0 0))
      (local.set $jv (v128.const i32x4 0 1 2 3))
      (local.set $p (local.get $sc))
      (local.set $jb (i32.const 0))
      (loop $e
        (local.set $x (f32x4.sub (v128.load (local.get $p)) (local.get $mv)))
        (local.set $x (v128.and (call $exp (f32x4.max (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
          (v128.and (i32x4.lt_s (local.get $jv) (local.get $nv)) (f32x4.gt (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))))
        (v128.store (local.get $p) (local.get $x))
        (local.set $sum (f32x4.add (local.get $sum) (local.get $x)))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (br_if $e (i32.lt_s (local.tee $jb (i32.add (local.get $jb) (i32.const 4))) (local.get $n16))))
      (local.set $inv (f32.div (f32.const 1) (call $hsum (local.get $sum))))

      ;; o[c] = Σ_j p_j·vt[c][j] / l, 16 keys at a time
      (local.set $c (i32.const 0))
      (local.set $cp (local.get $vb))
      (local.set $qc (local.get $o))
      (loop $pv
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $p (local.get $sc))
        (local.set $kb (local.get $cp))
        (local.set $jb (i32.const 0))
        (loop $acc
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (v128.load (local.get $p)) (v128.load (local.get $kb)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (v128.load offset=16 (local.get $p)) (v128.load offset=16 (local.get $kb)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (v128.load offset=32 (local.get $p)) (v128.load offset=32 (local.get $kb)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (v128.load offset=48 (local.get $p)) (v128.load offset=48 (local.get $kb)))))
          (local.set $p (i32.add (local.get $p) (i32.const 64)))
          (local.set $kb (i32.add (local.get $kb) (i32.const 64)))
          (br_if $acc (i32.lt_s (local.tee $jb (i32.add (local.get $jb) (i32.const 16))) (local.get $n))))
        (f32.store (local.get $qc) (f32.mul (local.get $inv)
          (call $hsum (f32x4.add (f32x4.add (local.get $a0) (local.get $a1)) (f32x4.add (local.get $a2) (local.get $a3))))))
        (local.set $qc (i32.add (local.get $qc) (i32.const 4)))
        (local.set $cp (i32.add (local.get $cp) (local.get $sp4)))
        (br_if $pv (i32.lt_s (local.tee $c (i32.add (local.get $c) (i32.const 1))) (local.get $d))))

      (f32.store (local.get $st) (local.get $m))
      (f32.store offset=4 (local.get $st) (local.get $inv))
      (local.set $q (i32.add (local.get $q) (local.get $ldq4)))
      (local.set $o (i32.add (local.get $o) (local.get $ldq4)))
      (local.set $st (i32.add (local.get $st) (i32.shl (local.get $ldst) (i32.const 2))))
      (local.set $rng (i32.add (local.get $rng) (i32.const 8)))
      (br_if $tok (i32.lt_s (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $S)))))

  (func (export "bwd_head")
    (param $S i32) (param $Sp i32) (param $ldq i32) (param $d i32) (param $scale f32)
    (param $q i32) (param $kt i32) (param $vt i32) (param $o i32) (param $dout i32) (param $st i32) (param $ldst i32)
    (param $rng i32) (param $sc i32) (param $dq i32) (param $dkt i32) (param $dvt i32)
    (local $i i32) (local $lo i32) (local $n i32) (local $jb i32) (local $c i32)
    (local $kb i32) (local $vb i32) (local $dkb i32) (local $dvb i32) (local $cp i32) (local $vp i32)
    (local $qc i32) (local $gc i32) (local $p i32) (local $sp4 i32) (local $ldq4 i32)
    (local $a0 v128) (local $a1 v128) (local $a2 v128) (local $a3 v128)
    (local $b0 v128) (local $b1 v128) (local $b2 v128) (local $b3 v128) (local $x v128) (local $y v128)
    (local $jv v128) (local $nv v128) (local $sv v128) (local $mv v128) (local $dv v128)
    (local $D f32)
    (local.set $sp4 (i32.shl (local.get $Sp) (i32.const 2)))
    (local.set $ldq4 (i32.shl (local.get $ldq) (i32.const 2)))
    (local.set $sv (f32x4.splat (local.get $scale)))
    (loop $tok
      (local.set $lo (i32.load (local.get $rng)))
      (local.set $n (i32.sub (i32.load offset=4 (local.get $rng)) (local.get $lo)))
      (local.set $kb (i32.add (local.get $kt) (i32.shl (local.get $lo) (i32.const 2))))
      (local.set $vb (i32.add (local.get $vt) (i32.shl (local.get $lo) (i32.const 2))))
      (local.set $dkb (i32.add (local.get $dkt) (i32.shl (local.get $lo) (i32.const 2))))
      (local.set $dvb (i32.add (local.get $dvt) (i32.shl (local.get $lo) (i32.const 2))))
      (local.set $nv (i32x4.splat (local.get $n)))
      (local.set $mv (v128.load32_splat (local.get $st)))

      ;; D = dO·o
      (local.set $D (f32.const 0))
      (local.set $c (i32.const 0))
      (loop $dd
        (local.set $D (f32.add (local.get $D) (f32.mul
          (f32.load (i32.add (local.get $dout) (i32.shl (local.get $c) (i32.const 2))))
          (f32.load (i32.add (local.get $o) (i32.shl (local.get $c) (i32.const 2)))))))
        (br_if $dd (i32.lt_s (local.tee $c (i32.add (local.get $c) (i32.const 1))) (local.get $d))))
      (local.set $dv (f32x4.splat (local.get $D)))

      ;; 16 keys at a time: s = scale·q·k (a), dP = dO·v (b); P into sc, dS·scale into sc + Sp
      (local.set $jv (v128.const i32x4 0 1 2 3))
      (local.set $jb (i32.const 0))
      (loop $s16
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $b0 (v128.const i32x4 0 0 0 0))
        (local.set $b1 (v128.const i32x4 0 0 0 0))
        (local.set $b2 (v128.const i32x4 0 0 0 0))
        (local.set $b3 (v128.const i32x4 0 0 0 0))
        (local.set $cp (i32.add (local.get $kb) (i32.shl (local.get $jb) (i32.const 2))))
        (local.set $vp (i32.add (local.get $vb) (i32.shl (local.get $jb) (i32.const 2))))
        (local.set $qc (local.get $q))
        (local.set $gc (local.get $dout))
        (local.set $c (local.get $d))
        (loop $dot
          (local.set $x (v128.load32_splat (local.get $qc)))
          (local.set $y (v128.load32_splat (local.get $gc)))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $x) (v128.load (local.get $cp)))))
          (local.set $b0 (f32x4.add (local.get $b0) (f32x4.mul (local.get $y) (v128.load (local.get $vp)))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $x) (v128.load offset=16 (local.get $cp)))))
          (local.set $b1 (f32x4.add (local.get $b1) (f32x4.mul (local.get $y) (v128.load offset=16 (local.get $vp)))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $x) (v128.load offset=32 (local.get $cp)))))
          (local.set $b2 (f32x4.add (local.get $b2) (f32x4.mul (local.get $y) (v128.load offset=32 (local.get $vp)))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $x) (v128.load offset=48 (local.get $cp)))))
          (local.set $b3 (f32x4.add (local.get $b3) (f32x4.mul (local.get $y) (v128.load offset=48 (local.get $vp)))))
          (local.set $qc (i32.add (local.get $qc) (i32.const 4)))
          (local.set $gc (i32.add (local.get $gc) (i32.const 4)))
          (local.set $cp (i32.add (local.get $cp) (local.get $sp4)))
          (local.set $vp (i32.add (local.get $vp) (local.get $sp4)))
          (br_if $dot (local.tee $c (i32.sub (local.get $c) (i32.const 1)))))
        (local.set $p (i32.add (local.get $sc) (i32.shl (local.get $jb) (i32.const 2))))
        ;; lane group 0..3
        (local.set $x (f32x4.sub (f32x4.mul (local.get $a0) (local.get $sv)) (local.get $mv)))
        (local.set $x (v128.and (call $exp (f32x4.max (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
          (v128.and (i32x4.lt_s (local.get $jv) (local.get $nv)) (f32x4.gt (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))))
        (v128.store (local.get $p) (local.get $x))
        (v128.store (i32.add (local.get $p) (local.get $sp4)) (f32x4.mul (f32x4.mul (local.get $x) (f32x4.sub (local.get $b0) (local.get $dv))) (local.get $sv)))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (local.set $x (f32x4.sub (f32x4.mul (local.get $a1) (local.get $sv)) (local.get $mv)))
        (local.set $x (v128.and (call $exp (f32x4.max (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
          (v128.and (i32x4.lt_s (local.get $jv) (local.get $nv)) (f32x4.gt (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))))
        (v128.store (local.get $p) (local.get $x))
        (v128.store (i32.add (local.get $p) (local.get $sp4)) (f32x4.mul (f32x4.mul (local.get $x) (f32x4.sub (local.get $b1) (local.get $dv))) (local.get $sv)))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (local.set $x (f32x4.sub (f32x4.mul (local.get $a2) (local.get $sv)) (local.get $mv)))
        (local.set $x (v128.and (call $exp (f32x4.max (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
          (v128.and (i32x4.lt_s (local.get $jv) (local.get $nv)) (f32x4.gt (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))))
        (v128.store (local.get $p) (local.get $x))
        (v128.store (i32.add (local.get $p) (local.get $sp4)) (f32x4.mul (f32x4.mul (local.get $x) (f32x4.sub (local.get $b2) (local.get $dv))) (local.get $sv)))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (local.set $p (i32.add (local.get $p) (i32.const 16)))
        (local.set $x (f32x4.sub (f32x4.mul (local.get $a3) (local.get $sv)) (local.get $mv)))
        (local.set $x (v128.and (call $exp (f32x4.max (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))
          (v128.and (i32x4.lt_s (local.get $jv) (local.get $nv)) (f32x4.gt (local.get $x) (v128.const f32x4 -87 -87 -87 -87)))))
        (v128.store (local.get $p) (local.get $x))
        (v128.store (i32.add (local.get $p) (local.get $sp4)) (f32x4.mul (f32x4.mul (local.get $x) (f32x4.sub (local.get $b3) (local.get $dv))) (local.get $sv)))
        (local.set $jv (i32x4.add (local.get $jv) (v128.const i32x4 4 4 4 4)))
        (br_if $s16 (i32.lt_s (local.tee $jb (i32.add (local.get $jb) (i32.const 16))) (local.get $n))))

      ;; per head dimension c, 16 keys at a time (sc holds zeros up to the 16-key boundary): dvt += P·dO[c],
      ;; dkt += dS·q[c], dq[c] = Σ dS·kt[c]
      (local.set $c (i32.const 0))
      (loop $pb
        (local.set $x (v128.load32_splat (i32.add (local.get $q) (i32.shl (local.get $c) (i32.const 2)))))
        (local.set $y (v128.load32_splat (i32.add (local.get $dout) (i32.shl (local.get $c) (i32.const 2)))))
        (local.set $a0 (v128.const i32x4 0 0 0 0))
        (local.set $a1 (v128.const i32x4 0 0 0 0))
        (local.set $a2 (v128.const i32x4 0 0 0 0))
        (local.set $a3 (v128.const i32x4 0 0 0 0))
        (local.set $p (local.get $sc))
        (local.set $qc (i32.add (local.get $sc) (local.get $sp4)))
        (local.set $cp (i32.add (local.get $kb) (i32.mul (local.get $c) (local.get $sp4))))
        (local.set $gc (i32.add (local.get $dkb) (i32.mul (local.get $c) (local.get $sp4))))
        (local.set $vp (i32.add (local.get $dvb) (i32.mul (local.get $c) (local.get $sp4))))
        (local.set $jb (i32.const 0))
        (loop $blk
          (local.set $b0 (v128.load (local.get $p)))
          (local.set $b1 (v128.load (local.get $qc)))
          (v128.store (local.get $vp) (f32x4.add (v128.load (local.get $vp)) (f32x4.mul (local.get $b0) (local.get $y))))
          (v128.store (local.get $gc) (f32x4.add (v128.load (local.get $gc)) (f32x4.mul (local.get $b1) (local.get $x))))
          (local.set $a0 (f32x4.add (local.get $a0) (f32x4.mul (local.get $b1) (v128.load (local.get $cp)))))
          (local.set $b0 (v128.load offset=16 (local.get $p)))
          (local.set $b1 (v128.load offset=16 (local.get $qc)))
          (v128.store offset=16 (local.get $vp) (f32x4.add (v128.load offset=16 (local.get $vp)) (f32x4.mul (local.get $b0) (local.get $y))))
          (v128.store offset=16 (local.get $gc) (f32x4.add (v128.load offset=16 (local.get $gc)) (f32x4.mul (local.get $b1) (local.get $x))))
          (local.set $a1 (f32x4.add (local.get $a1) (f32x4.mul (local.get $b1) (v128.load offset=16 (local.get $cp)))))
          (local.set $b0 (v128.load offset=32 (local.get $p)))
          (local.set $b1 (v128.load offset=32 (local.get $qc)))
          (v128.store offset=32 (local.get $vp) (f32x4.add (v128.load offset=32 (local.get $vp)) (f32x4.mul (local.get $b0) (local.get $y))))
          (v128.store offset=32 (local.get $gc) (f32x4.add (v128.load offset=32 (local.get $gc)) (f32x4.mul (local.get $b1) (local.get $x))))
          (local.set $a2 (f32x4.add (local.get $a2) (f32x4.mul (local.get $b1) (v128.load offset=32 (local.get $cp)))))
          (local.set $b0 (v128.load offset=48 (local.get $p)))
          (local.set $b1 (v128.load offset=48 (local.get $qc)))
          (v128.store offset=48 (local.get $vp) (f32x4.add (v128.load offset=48 (local.get $vp)) (f32x4.mul (local.get $b0) (local.get $y))))
          (v128.store offset=48 (local.get $gc) (f32x4.add (v128.load offset=48 (local.get $gc)) (f32x4.mul (local.get $b1) (local.get $x))))
          (local.set $a3 (f32x4.add (local.get $a3) (f32x4.mul (local.get $b1) (v128.load offset=48 (local.get $cp)))))
          (local.set $p (i32.add (local.get $p) (i32.const 64)))
          (local.set $qc (i32.add (local.get $qc) (i32.const 64)))
          (local.set $cp (i32.add (local.get $cp) (i32.const 64)))
          (local.set $gc (i32.add (local.get $gc) (i32.const 64)))
          (local.set $vp (i32.add (local.get $vp) (i32.const 64)))
          (br_if $blk (i32.lt_s (local.tee $jb (i32.add (local.get $jb) (i32.const 16))) (local.get $n))))
        (f32.store (i32.add (local.get $dq) (i32.shl (local.get $c) (i32.const 2)))
          (call $hsum (f32x4.add (f32x4.add (local.get $a0) (local.get $a1)) (f32x4.add (local.get $a2) (local.get $a3)))))
        (br_if $pb (i32.lt_s (local.tee $c (i32.add (local.get $c) (i32.const 1))) (local.get $d))))

      (local.set $q (i32.add (local.get $q) (local.get $ldq4)))
      (local.set $o (i32.add (local.get $o) (local.get $ldq4)))
      (local.set $dout (i32.add (local.get $dout) (local.get $ldq4)))
      (local.set $dq (i32.add (local.get $dq) (local.get $ldq4)))
      (local.set $st (i32.add (local.get $st) (i32.shl (local.get $ldst) (i32.const 2))))
      (local.set $rng (i32.add (local.get $rng) (i32.const 8)))
      (br_if $tok (i32.lt_s (local.tee $i (i32.add (local.get $i) (i32.const 1))) (local.get $S))))))
