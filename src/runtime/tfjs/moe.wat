;; moe_up_grouped and moe_down_routed on each token's top-k experts only (the CPU kernel table's, through ./moe.ts
;; and ./moe-down.ts), with WebAssembly SIMD (128-bit) gathers and scatters around a GEMM (mm: gemm.wat's
;; micro-kernel, packed row-major blocks, M a multiple of 4, N of 8).
;;
;; It imports only a memory and works in it: moe.ts instantiates it over a gemm.wasm instance's memory (the
;; copying path, which also calls that instance's own exports) and over tfjs-backend-wasm's heap (in place:
;; see "In place" below). Indices in idx may carry bit 31 (a token's entry after its first), which every
;; function here masks off. All addresses are byte offsets,
;; all matrices row-major f32 with an explicit row length (ld, in elements). Routing tables (laid out by
;; moe.ts): for expert e, `tab` holds [off_e, n_e] (i32) and the n_e tokens routed to e (gate != 0) are
;; idx[off_e ..] (i32, ascending) with their gates gts[off_e ..] (f32).
;;
;;   gather(src, ld, idx, sc, c, n, w, dst, ldd)     dst[i, j] = c·sc[i]·src[idx[i], j] (j < w; sc = 0: no
;;                                                   sc), dst[i, w..ldd) = 0
;;   gather_t(src, ld, idx, sc, c, n, w, dst)         dst[j, i] = c·sc[i]·src[idx[i], j] ([w, n])
;;   scatter_add(src, lds, idx, n, w, dst, ldd, first) dst[idx[i], j] += src[i, j]; first = 1: = instead of += for a
;;                                                   token's first entry (idx[i] >= 0, see nn below)
;;   transpose(src, lds, rows, cols, dst, ldd)        dst[j, i] = src[i, j]
;;   dh_scatter(u, ldu, idx, gts, n, w, dh, ldh, h, dg, ldg)
;;                                                   dh[t, j] = gts[i]·u[i, j], dg[t, 0] = Σ_j u[i, j]·h[t, j]
;;                                                   (t = idx[i])
;;   fwd_experts   y[t] += c·gate·h_e[t]·B_eᵀ over the routed (t, e): gather, mm, scatter_add per expert
;;                 (its last argument: scatter_add's first)
;;   dh_experts    U = c·dY_rows·B_e per expert, then dh_scatter (dh_e and dgates of the routed entries)
;;   db_experts    dB_e = c·(gate·h_e rows)ᵀ·dY_rows per expert, stored [out, r]
(module
  (import "gemm" "memory" (memory 1))
  ;; Rows per chunk in fwd_experts and db_experts: an expert's gathered blocks are built and used CH rows at a
  ;; time (~45 KB at out 176), in cache, instead of one block of all its rows (~360 KB at 512 rows).
  (global $CH i32 (i32.const 64))

;; C = A·B, or C += A·B where acc != 0 (A [M, K], B [K, N], C [M, N] row-major; M a multiple of 4, N of 8):
;; gemm.wat's micro-kernel, copied so that this module needs no GEMM import and runs in any memory it is given
;; (the tfjs heap too); acc lets a product over many rows run in row chunks that stay in cache.
  (func $mm_rows
    (param $a i32) (param $b i32) (param $c i32) (param $batch i32) (param $M i32) (param $N i32) (param $K i32) (param $i0 i32) (param $i1 i32) (param $acc i32)
    (local $t i32) (local $i i32) (local $j i32)
    (local $pa i32) (local $pb i32) (local $pc i32)
    (local $a0 i32) (local $a1 i32) (local $a2 i32) (local $a3 i32) (local $kend i32)
    (local $bp i32) (local $cp i32) (local $rowA i32) (local $rowB i32)
    (local $c00 v128) (local $c01 v128) (local $c10 v128) (local $c11 v128)
    (local $c20 v128) (local $c21 v128) (local $c30 v128) (local $c31 v128)
    (local $b0 v128) (local $b1 v128) (local $av v128)
    (local.set $rowA (i32.shl (local.get $K) (i32.const 2)))
    (local.set $rowB (i32.shl (local.get $N) (i32.const 2)))
    (local.set $pa (local.get $a))
    (local.set $pb (local.get $b))
    (local.set $pc (local.get $c))
    (local.set $t (i32.const 0))
    (block $done
      (br_if $done (i32.le_s (local.get $batch) (i32.const 0)))
      (br_if $done (i32.ge_s (local.get $i0) (local.get $i1)))
      (loop $batches
        (local.set $i (local.get $i0))
        (loop $rows
          (local.set $j (i32.const 0))
          (loop $cols
            (local.set $cp (i32.add (local.get $pc)
              (i32.shl (i32.add (i32.mul (local.get $i) (local.get $N)) (local.get $j)) (i32.const 2))))
            (if (local.get $acc)
              (then
                (local.set $c00 (v128.load (local.get $cp))) (local.set $c01 (v128.load offset=16 (local.get $cp)))
                (local.set $c10 (v128.load (i32.add (local.get $cp) (local.get $rowB))))
                (local.set $c11 (v128.load offset=16 (i32.add (local.get $cp) (local.get $rowB))))
                (local.set $c20 (v128.load (i32.add (local.get $cp) (i32.shl (local.get $rowB) (i32.const 1)))))
                (local.set $c21 (v128.load offset=16 (i32.add (local.get $cp) (i32.shl (local.get $rowB) (i32.const 1)))))
                (local.set $c30 (v128.load (i32.add (local.get $cp) (i32.mul (local.get $rowB) (i32.const 3)))))
                (local.set $c31 (v128.load offset=16 (i32.add (local.get $cp) (i32.mul (local.get $rowB) (i32.const 3))))))
              (else
                (local.set $c00 (v128.const i32x4 0 0 0 0)) (local.set $c01 (v128.const i32x4 0 0 0 0))
                (local.set $c10 (v128.const i32x4 0 0 0 0)) (local.set $c11 (v128.const i32x4 0 0 0 0))
                (local.set $c20 (v128.const i32x4 0 0 0 0)) (local.set $c21 (v128.const i32x4 0 0 0 0))
                (local.set $c30 (v128.const i32x4 0 0 0 0)) (local.set $c31 (v128.const i32x4 0 0 0 0))))
            (local.set $a0 (i32.add (local.get $pa) (i32.mul (local.get $i) (local.get $rowA))))
            (local.set $a1 (i32.add (local.get $a0) (local.get $rowA)))
            (local.set $a2 (i32.add (local.get $a1) (local.get $rowA)))
            (local.set $a3 (i32.add (local.get $a2) (local.get $rowA)))
            (local.set $kend (local.get $a1))
            (local.set $bp (i32.add (local.get $pb) (i32.shl (local.get $j) (i32.const 2))))
            (loop $ks
              (local.set $b0 (v128.load (local.get $bp)))
              (local.set $b1 (v128.load offset=16 (local.get $bp)))
              (local.set $av (v128.load32_splat (local.get $a0)))
              (local.set $c00 (f32x4.add (local.get $c00) (f32x4.mul (local.get $av) (local.get $b0))))
              (local.set $c01 (f32x4.add (local.get $c01) (f32x4.mul (local.get $av) (local.get $b1))))
              (local.set $av (v128.load32_splat (local.get $a1)))
              (local.set $c10 (f32x4.add (local.get $c10) (f32x4.mul (local.get $av) (local.get $b0))))
              (local.set $c11 (f32x4.add (local.get $c11) (f32x4.mul (local.get $av) (local.get $b1))))
              (local.set $av (v128.load32_splat (local.get $a2)))
              (local.set $c20 (f32x4.add (local.get $c20) (f32x4.mul (local.get $av) (local.get $b0))))
              (local.set $c21 (f32x4.add (local.get $c21) (f32x4.mul (local.get $av) (local.get $b1))))
              (local.set $av (v128.load32_splat (local.get $a3)))
              (local.set $c30 (f32x4.add (local.get $c30) (f32x4.mul (local.get $av) (local.get $b0))))
              (local.set $c31 (f32x4.add (local.get $c31) (f32x4.mul (local.get $av) (local.get $b1))))
              (local.set $a0 (i32.add (local.get $a0) (i32.const 4)))
              (local.set $a1 (i32.add (local.get $a1) (i32.const 4)))
              (local.set $a2 (i32.add (local.get $a2) (i32.const 4)))
              (local.set $a3 (i32.add (local.get $a3) (i32.const 4)))
              (local.set $bp (i32.add (local.get $bp) (local.get $rowB)))
              (br_if $ks (i32.lt_u (local.get $a0) (local.get $kend))))
            (v128.store (local.get $cp) (local.get $c00))
            (v128.store offset=16 (local.get $cp) (local.get $c01))
            (local.set $cp (i32.add (local.get $cp) (local.get $rowB)))
            (v128.store (local.get $cp) (local.get $c10))
            (v128.store offset=16 (local.get $cp) (local.get $c11))
            (local.set $cp (i32.add (local.get $cp) (local.get $rowB)))
            (v128.store (local.get $cp) (local.get $c20))
            (v128.store offset=16 (local.get $cp) (local.get $c21))
            (local.set $cp (i32.add (local.get $cp) (local.get $rowB)))
            (v128.store (local.get $cp) (local.get $c30))
            (v128.store offset=16 (local.get $cp) (local.get $c31))
            (local.set $j (i32.add (local.get $j) (i32.const 8)))
            (br_if $cols (i32.lt_s (local.get $j) (local.get $N))))
          (local.set $i (i32.add (local.get $i) (i32.const 4)))
          (br_if $rows (i32.lt_s (local.get $i) (local.get $i1))))
        (local.set $pa (i32.add (local.get $pa) (i32.mul (local.get $M) (local.get $rowA))))
        (local.set $pb (i32.add (local.get $pb) (i32.mul (local.get $K) (local.get $rowB))))
        (local.set $pc (i32.add (local.get $pc) (i32.mul (local.get $M) (local.get $rowB))))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br_if $batches (i32.lt_s (local.get $t) (local.get $batch))))))
  (func $mm (export "mm") (param $a i32) (param $b i32) (param $c i32) (param $M i32) (param $N i32) (param $K i32) (param $acc i32)
    (call $mm_rows (local.get $a) (local.get $b) (local.get $c) (i32.const 1) (local.get $M) (local.get $N) (local.get $K) (i32.const 0) (local.get $M) (local.get $acc)))


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
          (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))) (i32.const 0x7fffffff)) (local.get $ld)) (i32.const 2))))
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
          (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))) (i32.const 0x7fffffff)) (local.get $ld)) (i32.const 2))))
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
    (param $src i32) (param $lds i32) (param $idx i32) (param $n i32) (param $w i32) (param $dst i32) (param $ldd i32) (param $first i32)
    (local $i i32) (local $j i32) (local $s i32) (local $d i32) (local $w4 i32) (local $p i32) (local $st i32)
    (local.set $w4 (i32.and (local.get $w) (i32.const -4)))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (loop $rows
        (local.set $s (i32.add (local.get $src) (i32.shl (i32.mul (local.get $i) (local.get $lds)) (i32.const 2))))
        (local.set $d (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $st (i32.and (local.get $first) (i32.ge_s (local.get $d) (i32.const 0))))
        (local.set $d (i32.add (local.get $dst) (i32.shl (i32.mul
          (i32.and (local.get $d) (i32.const 0x7fffffff)) (local.get $ldd)) (i32.const 2))))
        (local.set $j (i32.const 0))
        (if (local.get $st)
          (then
            (block $sv (loop $svl
              (br_if $sv (i32.ge_s (local.get $j) (local.get $w4)))
              (v128.store (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2)))
                (v128.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))))
              (local.set $j (i32.add (local.get $j) (i32.const 4)))
              (br $svl)))
            (block $st1 (loop $stl
              (br_if $st1 (i32.ge_s (local.get $j) (local.get $w)))
              (f32.store (i32.add (local.get $d) (i32.shl (local.get $j) (i32.const 2)))
                (f32.load (i32.add (local.get $s) (i32.shl (local.get $j) (i32.const 2)))))
              (local.set $j (i32.add (local.get $j) (i32.const 1)))
              (br $stl)))))
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
        (local.set $t (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $i) (i32.const 2)))) (i32.const 0x7fffffff)))
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
    (param $bt i32) (param $a i32) (param $cb i32) (param $y i32) (param $out i32) (param $outP i32) (param $c f32) (param $first i32)
    (local $e i32) (local $off i32) (local $n i32) (local $p i32) (local $m i32) (local $ip i32)
    (block $done
      (br_if $done (i32.le_s (local.get $E) (i32.const 0)))
      (loop $experts
        (local.set $off (i32.shl (i32.load (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))) (i32.const 2)))
        (local.set $n (i32.load offset=4 (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then
            (local.set $p (i32.const 0))
            (loop $chunks
              (local.set $m (i32.sub (local.get $n) (local.get $p)))
              (if (i32.gt_s (local.get $m) (global.get $CH)) (then (local.set $m (global.get $CH))))
              (local.set $ip (i32.add (i32.add (local.get $idx) (local.get $off)) (i32.shl (local.get $p) (i32.const 2))))
              (call $gather (i32.add (local.get $h) (i32.shl (i32.mul (local.get $e) (local.get $r)) (i32.const 2))) (local.get $ldh)
                (local.get $ip) (i32.add (i32.add (local.get $gts) (local.get $off)) (i32.shl (local.get $p) (i32.const 2))) (local.get $c)
                (local.get $m) (local.get $r) (local.get $a) (local.get $r))
              (call $mm (local.get $a)
                (i32.add (local.get $bt) (i32.shl (i32.mul (i32.mul (local.get $e) (local.get $r)) (local.get $outP)) (i32.const 2)))
                (local.get $cb) (i32.and (i32.add (local.get $m) (i32.const 3)) (i32.const -4)) (local.get $outP) (local.get $r) (i32.const 0))
              (call $scatter_add (local.get $cb) (local.get $outP) (local.get $ip) (local.get $m)
                (local.get $out) (local.get $y) (local.get $out) (local.get $first))
              (local.set $p (i32.add (local.get $p) (global.get $CH)))
              (br_if $chunks (i32.lt_s (local.get $p) (local.get $n))))))
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
            (call $mm (local.get $g)
              (i32.add (local.get $bp) (i32.shl (i32.mul (i32.mul (local.get $e) (local.get $outP)) (local.get $rP)) (i32.const 2)))
              (local.get $u) (i32.and (i32.add (local.get $n) (i32.const 3)) (i32.const -4)) (local.get $rP) (local.get $outP) (i32.const 0))
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
    (local $e i32) (local $off i32) (local $n i32) (local $p i32) (local $m i32) (local $ip i32)
    (block $done
      (br_if $done (i32.le_s (local.get $E) (i32.const 0)))
      (loop $experts
        (local.set $off (i32.shl (i32.load (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))) (i32.const 2)))
        (local.set $n (i32.load offset=4 (i32.add (local.get $tab) (i32.shl (local.get $e) (i32.const 3)))))
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then
            (local.set $p (i32.const 0))
            (loop $chunks
              (local.set $m (i32.sub (local.get $n) (local.get $p)))
              (if (i32.gt_s (local.get $m) (global.get $CH)) (then (local.set $m (global.get $CH))))
              (local.set $ip (i32.add (i32.add (local.get $idx) (local.get $off)) (i32.shl (local.get $p) (i32.const 2))))
              (call $gather_t (i32.add (local.get $h) (i32.shl (i32.mul (local.get $e) (local.get $r)) (i32.const 2))) (local.get $ldh)
                (local.get $ip) (i32.add (i32.add (local.get $gts) (local.get $off)) (i32.shl (local.get $p) (i32.const 2))) (local.get $c)
                (local.get $m) (local.get $r) (local.get $at))
              (call $gather (local.get $dy) (local.get $out) (local.get $ip) (i32.const 0) (f32.const 1)
                (local.get $m) (local.get $out) (local.get $g) (local.get $outP))
              (call $mm (local.get $at) (local.get $g) (local.get $cb)
                (i32.and (i32.add (local.get $r) (i32.const 3)) (i32.const -4)) (local.get $outP) (local.get $m) (local.get $p))
              (local.set $p (i32.add (local.get $p) (global.get $CH)))
              (br_if $chunks (i32.lt_s (local.get $p) (local.get $n))))
            (call $transpose (local.get $cb) (local.get $outP) (local.get $r) (local.get $out)
              (i32.add (local.get $db) (i32.shl (i32.mul (i32.mul (local.get $e) (local.get $out)) (local.get $r)) (i32.const 2))) (local.get $r))))
        (local.set $e (i32.add (local.get $e) (i32.const 1)))
        (br_if $experts (i32.lt_s (local.get $e) (local.get $E))))))
;; ---- In place: moe.ts also runs this module in an instance over tfjs-backend-wasm's heap, on the tensors where
;; they are (no copies in or out; scratch from the heap's malloc).
;; Rows are addressed through idx (row t = idx[i] & 0x7fffffff; bit 31 set: the token's entry is not its first,
;; in expert order) or, idx = 0, are 0 .. n-1.
;;
;;   nn(a, lda, b, ldb, K, N, c, ldc, idx, n, sc, cs, mode, h, dg, ldg)
;;     acc = A[t, 0..K)·B (B [K, N] row-major, row length ldb), w = cs·acc, v = (sc ? sc[i] : 1)·w, then
;;     mode 0: C[t] = v; 1: C[t] += v; 2: C[t] = v for a token's first entry, += for the others;
;;     3: C[t] = v and dg[t·ldg] += w·H[t] (H: h with C's layout). N a multiple of 8; K >= 1; tmp: 32 floats of
;;     scratch. Tiles of 4 rows x 8 columns in registers, A's rows read where they are (no gathered copy). For
;;     K = 16 (moe_up_grouped's forward) the per-tile cost makes it slower than gather + mm + scatter_add (~86 vs
;;     ~69 µs per expert at n 512, out 176), so only the long-K products (dh, moe_down_routed's forward) use it.

  (func $flush (param $tmp i32) (param $i i32) (param $j i32) (param $c i32) (param $ldc i32) (param $idx i32) (param $n i32)
    (param $sc i32) (param $cs f32) (param $mode i32) (param $h i32) (param $dg i32) (param $ldg i32)
    (local $q i32) (local $e i32) (local $t i32) (local $f i32) (local $sv v128) (local $cp i32) (local $hp i32) (local $dp i32)
    (local $v0 v128) (local $v1 v128) (local $d v128)
    (loop $rows
      (local.set $e (i32.add (local.get $i) (local.get $q)))
      (local.set $t (local.get $e))
      (local.set $f (i32.eq (local.get $mode) (i32.const 1)))
      (if (local.get $idx)
        (then
          (local.set $t (i32.load (i32.add (local.get $idx) (i32.shl (local.get $e) (i32.const 2)))))
          (if (i32.eq (local.get $mode) (i32.const 2)) (then (local.set $f (i32.lt_s (local.get $t) (i32.const 0)))))
          (local.set $t (i32.and (local.get $t) (i32.const 0x7fffffff)))))
      (local.set $sv (f32x4.splat (select (f32.mul (local.get $cs) (f32.load (i32.add (local.get $sc) (i32.shl (local.get $e) (i32.const 2)))))
        (local.get $cs) (local.get $sc))))
      (local.set $v0 (v128.load (local.get $tmp)))
      (local.set $v1 (v128.load offset=16 (local.get $tmp)))
      (local.set $cp (i32.add (local.get $c) (i32.shl (i32.add (i32.mul (local.get $t) (local.get $ldc)) (local.get $j)) (i32.const 2))))
      (if (local.get $dg) (then
        (local.set $hp (i32.add (local.get $h) (i32.sub (local.get $cp) (local.get $c))))
        (local.set $dp (i32.add (local.get $dg) (i32.shl (i32.mul (local.get $t) (local.get $ldg)) (i32.const 2))))
        (local.set $d (f32x4.add (f32x4.mul (local.get $v0) (v128.load (local.get $hp)))
          (f32x4.mul (local.get $v1) (v128.load offset=16 (local.get $hp)))))
        (f32.store (local.get $dp) (f32.add (f32.load (local.get $dp)) (f32.mul (local.get $cs)
          (f32.add (f32.add (f32x4.extract_lane 0 (local.get $d)) (f32x4.extract_lane 1 (local.get $d)))
            (f32.add (f32x4.extract_lane 2 (local.get $d)) (f32x4.extract_lane 3 (local.get $d)))))))))
      (local.set $v0 (f32x4.mul (local.get $v0) (local.get $sv)))
      (local.set $v1 (f32x4.mul (local.get $v1) (local.get $sv)))
      (if (local.get $f)
        (then
          (v128.store (local.get $cp) (f32x4.add (v128.load (local.get $cp)) (local.get $v0)))
          (v128.store offset=16 (local.get $cp) (f32x4.add (v128.load offset=16 (local.get $cp)) (local.get $v1))))
        (else
          (v128.store (local.get $cp) (local.get $v0))
          (v128.store offset=16 (local.get $cp) (local.get $v1))))
      (local.set $tmp (i32.add (local.get $tmp) (i32.const 32)))
      (local.set $q (i32.add (local.get $q) (i32.const 1)))
      (br_if $rows (i32.and (i32.lt_s (local.get $q) (i32.const 4)) (i32.lt_s (i32.add (local.get $i) (local.get $q)) (local.get $n))))))

  (func (export "nn")
    (param $a i32) (param $lda i32) (param $b i32) (param $ldb i32) (param $K i32) (param $N i32)
    (param $c i32) (param $ldc i32) (param $idx i32) (param $n i32) (param $sc i32) (param $cs f32) (param $mode i32)
    (param $h i32) (param $dg i32) (param $ldg i32) (param $tmp i32)
    (local $i i32) (local $j i32) (local $e i32) (local $k i32)
    (local $t i32) (local $f i32) (local $sv v128)
    (local $r0 i32) (local $r1 i32) (local $r2 i32) (local $r3 i32)
    (local $bp i32) (local $rowB i32) (local $cp i32) (local $hp i32) (local $dp i32)
    (local $c00 v128) (local $c01 v128) (local $c10 v128) (local $c11 v128)
    (local $c20 v128) (local $c21 v128) (local $c30 v128) (local $c31 v128)
    (local $b0 v128) (local $b1 v128) (local $av v128) (local $d v128)
    (local.set $rowB (i32.shl (local.get $ldb) (i32.const 2)))
    (if (i32.ne (local.get $mode) (i32.const 3)) (then (local.set $dg (i32.const 0))))
    (block $done
      (br_if $done (i32.le_s (local.get $n) (i32.const 0)))
      (br_if $done (i32.le_s (local.get $K) (i32.const 0)))
      (loop $tiles
        ;; rows i .. i+3 (past n: row i again, computed, not stored); per column tile, their A rows r_q, then K steps
        (local.set $j (i32.const 0))
        (loop $cols
          (local.set $c00 (v128.const i32x4 0 0 0 0)) (local.set $c01 (v128.const i32x4 0 0 0 0))
          (local.set $c10 (v128.const i32x4 0 0 0 0)) (local.set $c11 (v128.const i32x4 0 0 0 0))
          (local.set $c20 (v128.const i32x4 0 0 0 0)) (local.set $c21 (v128.const i32x4 0 0 0 0))
          (local.set $c30 (v128.const i32x4 0 0 0 0)) (local.set $c31 (v128.const i32x4 0 0 0 0))
          (local.set $bp (i32.add (local.get $b) (i32.shl (local.get $j) (i32.const 2))))
          (local.set $e (i32.add (local.get $i) (i32.const 0)))
          (if (i32.ge_s (local.get $e) (local.get $n)) (then (local.set $e (local.get $i))))
          (if (local.get $idx) (then (local.set $e (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $e) (i32.const 2)))) (i32.const 0x7fffffff)))))
          (local.set $r0 (i32.add (local.get $a) (i32.shl (i32.mul (local.get $e) (local.get $lda)) (i32.const 2))))
          (local.set $e (i32.add (local.get $i) (i32.const 1)))
          (if (i32.ge_s (local.get $e) (local.get $n)) (then (local.set $e (local.get $i))))
          (if (local.get $idx) (then (local.set $e (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $e) (i32.const 2)))) (i32.const 0x7fffffff)))))
          (local.set $r1 (i32.add (local.get $a) (i32.shl (i32.mul (local.get $e) (local.get $lda)) (i32.const 2))))
          (local.set $e (i32.add (local.get $i) (i32.const 2)))
          (if (i32.ge_s (local.get $e) (local.get $n)) (then (local.set $e (local.get $i))))
          (if (local.get $idx) (then (local.set $e (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $e) (i32.const 2)))) (i32.const 0x7fffffff)))))
          (local.set $r2 (i32.add (local.get $a) (i32.shl (i32.mul (local.get $e) (local.get $lda)) (i32.const 2))))
          (local.set $e (i32.add (local.get $i) (i32.const 3)))
          (if (i32.ge_s (local.get $e) (local.get $n)) (then (local.set $e (local.get $i))))
          (if (local.get $idx) (then (local.set $e (i32.and (i32.load (i32.add (local.get $idx) (i32.shl (local.get $e) (i32.const 2)))) (i32.const 0x7fffffff)))))
          (local.set $r3 (i32.add (local.get $a) (i32.shl (i32.mul (local.get $e) (local.get $lda)) (i32.const 2))))
          (local.set $k (i32.const 0))
          (block $k1d
            (br_if $k1d (i32.ge_s (local.get $k) (local.get $K)))
            (loop $k1s
            (local.set $b0 (v128.load (i32.add (local.get $bp) (i32.const 0))))
            (local.set $b1 (v128.load offset=16 (i32.add (local.get $bp) (i32.const 0))))
            (local.set $av (v128.load32_splat offset=0 (local.get $r0)))
            (local.set $c00 (f32x4.add (local.get $c00) (f32x4.mul (local.get $av) (local.get $b0))))
            (local.set $c01 (f32x4.add (local.get $c01) (f32x4.mul (local.get $av) (local.get $b1))))
            (local.set $av (v128.load32_splat offset=0 (local.get $r1)))
            (local.set $c10 (f32x4.add (local.get $c10) (f32x4.mul (local.get $av) (local.get $b0))))
            (local.set $c11 (f32x4.add (local.get $c11) (f32x4.mul (local.get $av) (local.get $b1))))
            (local.set $av (v128.load32_splat offset=0 (local.get $r2)))
            (local.set $c20 (f32x4.add (local.get $c20) (f32x4.mul (local.get $av) (local.get $b0))))
            (local.set $c21 (f32x4.add (local.get $c21) (f32x4.mul (local.get $av) (local.get $b1))))
            (local.set $av (v128.load32_splat offset=0 (local.get $r3)))
            (local.set $c30 (f32x4.add (local.get $c30) (f32x4.mul (local.get $av) (local.get $b0))))
            (local.set $c31 (f32x4.add (local.get $c31) (f32x4.mul (local.get $av) (local.get $b1))))
            (local.set $bp (i32.add (local.get $bp) (local.get $rowB)))
            (local.set $r0 (i32.add (local.get $r0) (i32.const 4))) (local.set $r1 (i32.add (local.get $r1) (i32.const 4)))
            (local.set $r2 (i32.add (local.get $r2) (i32.const 4))) (local.set $r3 (i32.add (local.get $r3) (i32.const 4)))
            (local.set $k (i32.add (local.get $k) (i32.const 1)))
            (br_if $k1s (i32.lt_s (local.get $k) (local.get $K)))))
          ;; the 4 x 8 tile through tmp to $flush (scale, store or add, mode 3's dgates): kept out of this loop, whose
          ;; twelve v128 registers it would otherwise crowd (inlined, it ran ~30% slower)
          (local.set $cp (local.get $tmp))
          (v128.store offset=0 (local.get $cp) (local.get $c00))
          (v128.store offset=16 (local.get $cp) (local.get $c01))
          (v128.store offset=32 (local.get $cp) (local.get $c10))
          (v128.store offset=48 (local.get $cp) (local.get $c11))
          (v128.store offset=64 (local.get $cp) (local.get $c20))
          (v128.store offset=80 (local.get $cp) (local.get $c21))
          (v128.store offset=96 (local.get $cp) (local.get $c30))
          (v128.store offset=112 (local.get $cp) (local.get $c31))
          (call $flush (local.get $tmp) (local.get $i) (local.get $j) (local.get $c) (local.get $ldc) (local.get $idx) (local.get $n) (local.get $sc) (local.get $cs) (local.get $mode) (local.get $h) (local.get $dg) (local.get $ldg))
          (local.set $j (i32.add (local.get $j) (i32.const 8)))
          (br_if $cols (i32.lt_s (local.get $j) (local.get $N))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br_if $tiles (i32.lt_s (local.get $i) (local.get $n)))))))
