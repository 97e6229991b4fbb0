;; One AdamW step over a run of f32 elements, WebAssembly SIMD, for the CPU `McpcAdamW` kernel
;; (../kernels/cpu-ops.ts): the plan's fused optimizer. The memory is imported (e.m): tfjs-backend-wasm's heap,
;; where the kernel's inputs and outputs live; all addresses are byte offsets (4-byte aligned is enough).
;;
;;   adamw(p, P, g, m, v, M, V, n, DEC, GS, B1, OB1, B2, OB2, SB2, EPS, LRB)   for i < n:
;;     gi = g[i]·GS;  M[i] = m[i]·B1 + gi·OB1;  V[i] = v[i]·B2 + (gi·gi)·OB2
;;     P[i] = p[i]·DEC − (M[i] / (sqrt(V[i]) / SB2 + EPS))·LRB
;;
;; Each operation is one IEEE f32 operation in exactly this order, as the JavaScript kernel computes with
;; Math.fround after each and tfjs's per-tensor ops do (optimizer.ts): the same bits on every element. Four
;; lanes a step; the last n mod 4 elements take the scalar loop.
(module
  (import "e" "m" (memory 1))

  (func (export "adamw")
    (param $p i32) (param $P i32) (param $g i32) (param $m i32) (param $v i32) (param $M i32) (param $V i32) (param $n i32)
    (param $dec f32) (param $gs f32) (param $b1 f32) (param $omb1 f32) (param $b2 f32) (param $omb2 f32)
    (param $sb2 f32) (param $eps f32) (param $lrb f32)
    (local $i i32) (local $n4 i32) (local $o i32)
    (local $gv v128) (local $mv v128) (local $vv v128)
    (local $DEC v128) (local $GS v128) (local $B1 v128) (local $OB1 v128) (local $B2 v128) (local $OB2 v128)
    (local $SB2 v128) (local $EPS v128) (local $LRB v128)
    (local $gf f32) (local $mf f32) (local $vf f32)
    (local.set $DEC (f32x4.splat (local.get $dec)))
    (local.set $GS (f32x4.splat (local.get $gs)))
    (local.set $B1 (f32x4.splat (local.get $b1)))
    (local.set $OB1 (f32x4.splat (local.get $omb1)))
    (local.set $B2 (f32x4.splat (local.get $b2)))
    (local.set $OB2 (f32x4.splat (local.get $omb2)))
    (local.set $SB2 (f32x4.splat (local.get $sb2)))
    (local.set $EPS (f32x4.splat (local.get $eps)))
    (local.set $LRB (f32x4.splat (local.get $lrb)))
    (local.set $n4 (i32.and (local.get $n) (i32.const -4)))
    (block $done4
      (loop $vec
        (br_if $done4 (i32.ge_u (local.get $i) (local.get $n4)))
        (local.set $o (i32.shl (local.get $i) (i32.const 2)))
        (local.set $gv (f32x4.mul (v128.load align=4 (i32.add (local.get $g) (local.get $o))) (local.get $GS)))
        (local.set $mv
          (f32x4.add
            (f32x4.mul (v128.load align=4 (i32.add (local.get $m) (local.get $o))) (local.get $B1))
            (f32x4.mul (local.get $gv) (local.get $OB1))))
        (local.set $vv
          (f32x4.add
            (f32x4.mul (v128.load align=4 (i32.add (local.get $v) (local.get $o))) (local.get $B2))
            (f32x4.mul (f32x4.mul (local.get $gv) (local.get $gv)) (local.get $OB2))))
        (v128.store align=4 (i32.add (local.get $M) (local.get $o)) (local.get $mv))
        (v128.store align=4 (i32.add (local.get $V) (local.get $o)) (local.get $vv))
        (v128.store align=4 (i32.add (local.get $P) (local.get $o))
          (f32x4.sub
            (f32x4.mul (v128.load align=4 (i32.add (local.get $p) (local.get $o))) (local.get $DEC))
            (f32x4.mul
              (f32x4.div (local.get $mv)
                (f32x4.add (f32x4.div (f32x4.sqrt (local.get $vv)) (local.get $SB2)) (local.get $EPS)))
              (local.get $LRB))))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $vec)))
    (block $done
      (loop $tail
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $o (i32.shl (local.get $i) (i32.const 2)))
        (local.set $gf (f32.mul (f32.load (i32.add (local.get $g) (local.get $o))) (local.get $gs)))
        (local.set $mf
          (f32.add
            (f32.mul (f32.load (i32.add (local.get $m) (local.get $o))) (local.get $b1))
            (f32.mul (local.get $gf) (local.get $omb1))))
        (local.set $vf
          (f32.add
            (f32.mul (f32.load (i32.add (local.get $v) (local.get $o))) (local.get $b2))
            (f32.mul (f32.mul (local.get $gf) (local.get $gf)) (local.get $omb2))))
        (f32.store (i32.add (local.get $M) (local.get $o)) (local.get $mf))
        (f32.store (i32.add (local.get $V) (local.get $o)) (local.get $vf))
        (f32.store (i32.add (local.get $P) (local.get $o))
          (f32.sub
            (f32.mul (f32.load (i32.add (local.get $p) (local.get $o))) (local.get $dec))
            (f32.mul
              (f32.div (local.get $mf)
                (f32.add (f32.div (f32.sqrt (local.get $vf)) (local.get $sb2)) (local.get $eps)))
              (local.get $lrb))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $tail)))))
