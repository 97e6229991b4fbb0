;; moe_up_grouped on each token's top-k experts only (the CPU kernel table's, through ./moe.ts), with
;; WebAssembly SIMD (128-bit) gathers and scatters around the GEMM of ./gemm.wat.
;;
;; It imports the memory and the `gemm(a, b, c, batch, M, N, K)` export of a gemm.wasm instance (packed
;; row-major blocks, M a multiple of 4, N of 8) and works in that memory. All addresses are byte offsets,
;; all matrices row-major f32 with an explicit row length (ld, in elements). Routing tables (laid out by
;; moe.ts): for expert e, `tab` holds [off_e, n_e] (i32) and the n_e tokens routed to e (gate != 0) are
;; idx[off_e ..] (i32, ascending) with their gates gts[off_e ..] (f32).
;;
;;   gather(src, ld, idx, sc, c, n, w, dst, ldd)     dst[i, j] = c·sc[i]·src[idx[i], j] (j < w; sc = 0: no
;;                                                   sc), dst[i, w..ldd) = 0
;;   gather_t(src, ld, idx, sc, c, n, w, dst)         dst[j, i] = c·sc[i]·src[idx[i], j] ([w, n])
;;   scatter_add(src, lds, idx, n, w, dst, ldd)       dst[idx[i], j] += src[i, j]
;;   transpose(src, lds, rows, cols, dst, ldd)        dst[j, i] = src[i, j]
;;   dh_scatter(u, ldu, idx, gts, n, w, dh, ldh, h, dg, ldg)
;;                                                   dh[t, j] = gts[i]·u[i, j], dg[t, 0] = Σ_j u[i, j]·h[t, j]
;;                                                   (t = idx[i])
;;   fwd_experts   y[t] += c·gate·h_e[t]·B_eᵀ over the routed (t, e): gather, gemm, scatter_add per expert
;;   dh_experts    U = c·dY_rows·B_e per expert, then dh_scatter (dh_e and dgates of the routed entries)
;;   db_experts    dB_e = c·(gate·h_e rows)ᵀ·dY_rows per expert, stored [out, r]
(module
  (import "gemm" "memory" (memory 1))
  (import "gemm" "gemm" (func $gemm (param i32 i32 i32 i32 i32 i32 i32)))

  (func $gather (export "gather")
    (param $src i32) (param $ld i32) (param $idx i32) (param $sc i32) (param $c f32) (param $n i32)
    (param $w i32) (param $dst i32) (param $ldd i32)
    (local $i i32) (local $j i32) (local $s i32) (local $d i32) (local $g f32) (local $gv v128) (local $w4 i32)
    (local.set $w4 (i32.and (local.get $w) (i32.const -4)))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (loop $rows
        (local.set $g (local.get $c))
        (if (local.get $sc)
          (then (local.set $g (f32.mul (local.get $g)
            (f32.load (i32.add (local.get $sc) (i32.shl (local.get $i) (i32.const 2))))))))
        (local.set $gv (f32x4.splat (local.get $g)))
        (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul
          (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))) (local.get $ld)) (i32.const 2))))
        (local.set $d (i32.add (local.get $dst) (i32.shl (i32.mul (local.get $i) (local.get $ldd)) (i32.const 2))))
        (local.set $j (i32.const 0))
        (block $v (loop $vl
          (br_if $v (i32.ge_s (local.get $j) (local.get $w4)))
          (v128.store (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2)))
            (f32x4.mul (v128.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))) (local.get $gv)))
          (local.set $j (i32.add (local.get $j) (i32.const 4)))
          (br $vl)))
        (block $t (loop $tl
          (br_if $t (i32.ge_s (local.get $j) (local.get $w)))
          (f32.store (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2)))
            (f32.mul (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))) (local.get $g)))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br $tl)))
        (block $z (loop $zl
          (br_if $z (i32.ge_s (local.get $j) (local.get $ldd)))
          (f32.store (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2))) (f32.const 0))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br $zl)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $i) (local.get $n))))))

  (func $gather_t (export "gather_t")
    (param $src i32) (param $ld i32) (param $idx i32) (param $sc i32) (param $c f32) (param $n i32)
    (param $w i32) (param $dst i32)
    (local $i i32) (local $j i32) (local $s i32) (local $d i32) (local $g f32) (local $step i32)
    (local.set $step (i32.shl (local.get $n) (i32.const 2)))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (br_if $done (i32.le_s (local.get $w) (i32.const 0)))
      (loop $rows
        (local.set $g (local.get $c))
        (if (local.get $sc)
          (then (local.set $g (f32.mul (local.get $g)
            (f32.load (i32.add (local.get $sc) (i32.shl (local.get $i) (i32.const 2))))))))
        (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul
          (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))) (local.get $ld)) (i32.const 2))))
        (local.set $d (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 2))))
        (local.set $j (i32.const 0))
        (loop $cols
          (f32.store (local.get $d) (f32.mul (f32.load (local.get $s)) (local.get $g)))
          (local.set $s (i32.add (local.get $s) (i32.const 4)))
          (local.set $d (i32.add (local.get $d) (local.get $step)))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br_if $cols (i32.lt_s (local.get $j) (local.get $w))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $i) (local.get $n))))))

  (func $scatter_add (export "scatter_add")
    (param $src i32) (param $lds i32) (param $idx i32) (param $n i32) (param $w i32) (param $dst i32) (param $ldd i32)
    (local $i i32) (local $j i32) (local $s i32) (local $d i32) (local $w4 i32) (local $p i32)
    (local.set $w4 (i32.and (local.get $w) (i32.const -4)))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (loop $rows
        (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul (local.get $i) (local.get $lds)) (i32.const 2))))
        (local.set $d (i32.add (local.get $dst) (i32.shl (i32.mul
          (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))) (local.get $ldd)) (i32.const 2))))
        (local.set $j (i32.const 0))
        (block $v (loop $vl
          (br_if $v (i32.ge_s (local.get $j) (local.get $w4)))
          (local.set $p (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2))))
          (v128.store (local.get $p) (f32x4.add (v128.load (local.get $p))
            (v128.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2))))))
          (local.set $j (i32.add (local.get $j) (i32.const 4)))
          (br $vl)))
        (block $t (loop $tl
          (br_if $t (i32.ge_s (local.get $j) (local.get $w)))
          (local.set $p (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2))))
          (f32.store (local.get $p) (f32.add (f32.load (local.get $p))
            (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2))))))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br $tl)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $i) (local.get $n))))))

  (func $transpose (export "transpose")
    (param $src i32) (param $lds i32) (param $rows i32) (param $cols i32) (param $dst i32) (param $ldd i32)
    (local $i i32) (local $j i32) (local $s i32) (local $d i32) (local $step i32)
    (local.set $step (i32.shl (local.get $ldd) (i32.const 2)))
    (block $done
      (br_if $done (i32.le_s (local.get $rows) (i32.const 0)))
      (br_if $done (i32.le_s (local.get $cols) (i32.const 0)))
      (loop $r
        (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul (local.get $i) (local.get $lds)) (i32.const 2))))
        (local.set $d (i32.add (local.get $dst) (i32.shl (local.get $i) (i32.const 2))))
        (local.set $j (i32.const 0))
        (loop $c
          (f32.store (local.get $d) (f32.load (local.get $s)))
          (local.set $s (i32.add (local.get $s) (i32.const 4)))
          (local.set $d (i32.add (local.get $d) (local.get $step)))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br_if $c (i32.lt_s (local.get $j) (local.get $cols))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $r (i32.lt_s (local.get $i) (local.get $rows))))))

  (func $dh_scatter (export "dh_scatter")
    (param $u i32) (param $ldu i32) (param $idx i32) (param $gts i32) (param $n i32) (param $w i32)
    (param $dh i32) (param $ldh i32) (param $h i32) (param $dg i32) (param $ldg i32)
    (local $i i32) (local $j i32) (local $t i32) (local $up i32) (local $dp i32) (local $hp i32) (local $w4 i32)
    (local $g f32) (local $gv v128) (local $uv v128) (local $acc v128) (local $sum f32) (local $uj f32)
    (local.set $w4 (i32.and (local.get $w) (i32.const -4)))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (loop $rows
        (local.set $t (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $g (f32.load (i32.add (local.get $gts) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $gv (f32x4.splat (local.get $g)))
        (local.set $up (i32.add (local.get $u) (i32.shl (i32.mul (local.get $i) (local.get $ldu)) (i32.const 2))))
        (local.set $dp (i32.add (local.get $dh) (i32.shl (i32.mul (local.get $t) (local.get $ldh)) (i32.const 2))))
        (local.set $hp (i32.add (local.get $h) (i32.shl (i32.mul (local.get $t) (local.get $ldh)) (i32.const 2))))
        (local.set $acc (v128.const i32x4 0 0 0 0))
        (local.set $j (i32.const 0))
        (block $v (loop $vl
          (br_if $v (i32.ge_s (local.get $j) (local.get $w4)))
          (local.set $uv (v128.load (i32.add (local.get $up) (i32.shl (local.get $j) (i32.const 2)))))
          (v128.store (i32.add (local.get $dp) (i32.shl (local.get $j) (i32.const 2))) (f32x4.mul (local.get $uv) (local.get $gv)))
          (local.set $acc (f32x4.add (local.get $acc)
            (f32x4.mul (local.get $uv) (v128.load (i32.add (local.get $hp) (i32.shl (local.get $j) (i32.const 2)))))))
          (local.set $j (i32.add (local.get $j) (i32.const 4)))
          (br $vl)))
        (local.set $sum (f32.add
          (f32.add (f32x4.extract_lane 0 (local.get $acc)) (f32x4.extract_lane 1 (local.get $acc)))
          (f32.add (f32x4.extract_lane 2 (local.get $acc)) (f32x4.extract_lane 3 (local.get $acc)))))
        (block $tb (loop $tl
          (br_if $tb (i32.ge_s (local.get $j) (local.get $w)))
          (local.set $uj (f32.load (i32.add (local.get $up) (i32.shl (local.get $j) (i32.const 2)))))
          (f32.store (i32.add (local.get $dp) (i32.shl (local.get $j) (i32.const 2))) (f32.mul (local.get $uj) (local.get $g)))
          (local.set $sum (f32.add (local.get $sum)
            (f32.mul (local.get $uj) (f32.load (i32.add (local.get $hp) (i32.shl (local.get $j) (i32.const 2)))))))
          (local.set $j (i32.add (local.get $j) (i32.const 1)))
          (br $tl)))
        (f32.store (i32.add (local.get $dg) (i32.shl (i32.mul (local.get $t) (local.get $ldg)) (i32.const 2))) (local.get $sum))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $i) (local.get $n))))))

  ;; Per expert e with n_e > 0: A = c·gate·h_e rows [⌈n_e⌉₄, r] (h points at expert 0's first column, row
  ;; length ldh), C = A·Bt_e (bt: the E blocks [r, outP] of B_eᵀ, zero-padded), y[t] += C rows (y [T, out]).
  (func (export "fwd_experts")
    (param $h i32) (param $ldh i32) (param $tab i32) (param $idx i32) (param $gts i32) (param $E i32) (param $r i32)
    (param $bt i32) (param $a i32) (param $cb i32) (param $y i32) (param $out i32) (param $outP i32) (param $c f32)
    (local $e i32) (local $off i32) (local $n i32)
    (block $done
      (br_if $done (i32.le_s (local.get $E) (i32.const 0)))
      (loop $experts
        (local.set $off (i32.shl (i32.load (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))) (i32.const 2)))
        (local.set $n (i32.load offset=4 (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then
            (call $gather (i32.add (local.get $h) (i32.shl (i32.mul (local.get $e) (local.get $r)) (i32.const 2))) (local.get $ldh)
              (i32.add (local.get $idx) (local.get $off)) (i32.add (local.get $gts) (local.get $off)) (local.get $c)
              (local.get $n) (local.get $r) (local.get $a) (local.get $r))
            (call $gemm (local.get $a)
              (i32.add (local.get $bt) (i32.shl (i32.mul (i32.mul (local.get $e) (local.get $r)) (local.get $outP)) (i32.const 2)))
              (local.get $cb) (i32.const 1) (i32.and (i32.add (local.get $n) (i32.const 3)) (i32.const -4)) (local.get $outP) (local.get $r))
            (call $scatter_add (local.get $cb) (local.get $outP) (i32.add (local.get $idx) (local.get $off)) (local.get $n)
              (local.get $out) (local.get $y) (local.get $out))))
        (local.set $e (i32.add (local.get $e) (i32.const 1)))
        (br_if $experts (i32.lt_s (local.get $e) (local.get $E))))))

  ;; Per expert e with n_e > 0: G = c·dY rows [⌈n_e⌉₄, outP] (dy [T, out]), U = G·Bp_e (bp: the E blocks
  ;; [outP, rP] of B_e, zero-padded), then dh_scatter into dh (expert 0's first column, row length ldh, the
  ;; same layout as h) and dg (column e of [T, E]).
  (func (export "dh_experts")
    (param $dy i32) (param $out i32) (param $outP i32) (param $tab i32) (param $idx i32) (param $gts i32) (param $E i32)
    (param $r i32) (param $rP i32) (param $bp i32) (param $g i32) (param $u i32)
    (param $h i32) (param $dh i32) (param $ldh i32) (param $dg i32) (param $c f32)
    (local $e i32) (local $off i32) (local $n i32) (local $col i32)
    (block $done
      (br_if $done (i32.le_s (local.get $E) (i32.const 0)))
      (loop $experts
        (local.set $off (i32.shl (i32.load (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))) (i32.const 2)))
        (local.set $n (i32.load offset=4 (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))))
        (local.set $col (i32.shl (i32.mul (local.get $e) (local.get $r)) (i32.const 2)))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then
            (call $gather (local.get $dy) (local.get $out) (i32.add (local.get $idx) (local.get $off)) (i32.const 0) (local.get $c)
              (local.get $n) (local.get $out) (local.get $g) (local.get $outP))
            (call $gemm (local.get $g)
              (i32.add (local.get $bp) (i32.shl (i32.mul (i32.mul (local.get $e) (local.get $outP)) (local.get $rP)) (i32.const 2)))
              (local.get $u) (i32.const 1) (i32.and (i32.add (local.get $n) (i32.const 3)) (i32.const -4)) (local.get $rP) (local.get $outP))
            (call $dh_scatter (local.get $u) (local.get $rP) (i32.add (local.get $idx) (local.get $off)) (i32.add (local.get $gts) (local.get $off))
              (local.get $n) (local.get $r) (i32.add (local.get $dh) (local.get $col)) (local.get $ldh)
              (i32.add (local.get $h) (local.get $col)) (i32.add (local.get $dg) (i32.shl (local.get $e) (i32.const 2))) (local.get $E))))
        (local.set $e (i32.add (local.get $e) (i32.const 1)))
        (br_if $experts (i32.lt_s (local.get $e) (local.get $E))))))

  ;; Per expert e with n_e > 0: At = c·gate·h_e rowsᵀ [r (rows up to ⌈r⌉₄ unused), n_e], G = dY rows
  ;; [n_e, outP], C = At·G [⌈r⌉₄, outP], dB_e = C[0..r)ᵀ stored at db + e·out·r as [out, r].
  (func (export "db_experts")
    (param $dy i32) (param $out i32) (param $outP i32) (param $tab i32) (param $idx i32) (param $gts i32) (param $E i32)
    (param $r i32) (param $h i32) (param $ldh i32) (param $at i32) (param $g i32) (param $cb i32) (param $db i32) (param $c f32)
    (local $e i32) (local $off i32) (local $n i32)
    (block $done
      (br_if $done (i32.le_s (local.get $E) (i32.const 0)))
      (loop $experts
        (local.set $off (i32.shl (i32.load (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))) (i32.const 2)))
        (local.set $n (i32.load offset=4 (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then
            (call $gather_t (i32.add (local.get $h) (i32.shl (i32.mul (local.get $e) (local.get $r)) (i32.const 2))) (local.get $ldh)
              (i32.add (local.get $idx) (local.get $off)) (i32.add (local.get $gts) (local.get $off)) (local.get $c)
              (local.get $n) (local.get $r) (local.get $at))
            (call $gather (local.get $dy) (local.get $out) (i32.add (local.get $idx) (local.get $off)) (i32.const 0) (f32.const 1)
              (local.get $n) (local.get $out) (local.get $g) (local.get $outP))
            (call $gemm (local.get $at) (local.get $g) (local.get $cb) (i32.const 1)
              (i32.and (i32.add (local.get $r) (i32.const 3)) (i32.const -4)) (local.get $outP) (local.get $n))
            (call $transpose (local.get $cb) (local.get $outP) (local.get $r) (local.get $out)
              (i32.add (local.get $db) (i32.shl (i32.mul (i32.mul (local.get $e) (local.get $out)) (local.get $r)) (i32.const 2))) (local.get $r))))
        (local.set $e (i32.add (local.get $e) (i32.const 1)))
        (br_if $experts (i32.lt_s (local.get $e) (local.get $E))))))
)
