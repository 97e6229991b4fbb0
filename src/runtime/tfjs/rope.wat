;; Rotary embedding (rotate-half) for the CPU `McpcRope` / `McpcRopeInverse` kernels (../kernels/cpu-ops.ts), in
;; WebAssembly SIMD, in place on tfjs-backend-wasm's heap (./rope.ts): the memory is imported (e.m), all
;; addresses are byte offsets into it (4-byte aligned is enough).
;;
;;   rope(x, y, cos, sin, T, H, half, sg)   x, y [T, H·2·half], cos, sin [T, half]; for token t, head h, i < half:
;;     c = cos[t, i], s = sg·sin[t, i] (sg = 1, or −1 for the inverse: the transpose of the rotation),
;;     y[t, h, i] = x1·c − x2·s,  y[t, h, half + i] = x2·c + x1·s   (x1 = x[t, h, i], x2 = x[t, h, half + i])
;;
;; in f32, each product and sum rounded as the reference's tfjs ops round them. Four i at a time, the last
;; half mod 4 one at a time; y may be x.
(module
  (import "e" "m" (memory 1))

  (func (export "rope")
    (param $x i32) (param $y i32) (param $cos i32) (param $sin i32) (param $T i32) (param $H i32) (param $half i32) (param $sg f32)
    (local $t i32) (local $h i32) (local $i i32) (local $h4 i32) (local $n4 i32) (local $xr i32) (local $yr i32) (local $cr i32) (local $sr i32) (local $o i32) (local $co i32)
    (local $c v128) (local $s v128) (local $x1 v128) (local $x2 v128) (local $sgv v128)
    (local $cf f32) (local $sf f32) (local $x1f f32) (local $x2f f32)
    (local.set $h4 (i32.shl (local.get $half) (i32.const 2)))
    (local.set $n4 (i32.shl (i32.shr_u (local.get $half) (i32.const 2)) (i32.const 4)))
    (local.set $sgv (f32x4.splat (local.get $sg)))
    (block $done
      (br_if $done (i32.eqz (i32.mul (local.get $T) (i32.mul (local.get $H) (local.get $half)))))
      (loop $tok
        (local.set $h (i32.const 0))
        (loop $head
          ;; row of this head: x + (t·H + h)·2·half floats
          (local.set $o (i32.shl (i32.mul (i32.add (i32.mul (local.get $t) (local.get $H)) (local.get $h)) (local.get $half)) (i32.const 3)))
          (local.set $xr (i32.add (local.get $x) (local.get $o)))
          (local.set $yr (i32.add (local.get $y) (local.get $o)))
          (local.set $co (i32.mul (local.get $t) (local.get $h4)))
          (local.set $cr (i32.add (local.get $cos) (local.get $co)))
          (local.set $sr (i32.add (local.get $sin) (local.get $co)))
          (local.set $i (i32.const 0))
          (block $v4
            (br_if $v4 (i32.eqz (local.get $n4)))
            (loop $vec
              (local.set $c (v128.load (i32.add (local.get $cr) (local.get $i))))
              (local.set $s (f32x4.mul (v128.load (i32.add (local.get $sr) (local.get $i))) (local.get $sgv)))
              (local.set $x1 (v128.load (i32.add (local.get $xr) (local.get $i))))
              (local.set $x2 (v128.load (i32.add (i32.add (local.get $xr) (local.get $h4)) (local.get $i))))
              (v128.store (i32.add (local.get $yr) (local.get $i))
                (f32x4.sub (f32x4.mul (local.get $x1) (local.get $c)) (f32x4.mul (local.get $x2) (local.get $s))))
              (v128.store (i32.add (i32.add (local.get $yr) (local.get $h4)) (local.get $i))
                (f32x4.add (f32x4.mul (local.get $x2) (local.get $c)) (f32x4.mul (local.get $x1) (local.get $s))))
              (br_if $vec (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 16))) (local.get $n4)))))
          (block $tail
            (br_if $tail (i32.ge_u (local.get $i) (local.get $h4)))
            (loop $one
              (local.set $cf (f32.load (i32.add (local.get $cr) (local.get $i))))
              (local.set $sf (f32.mul (f32.load (i32.add (local.get $sr) (local.get $i))) (local.get $sg)))
              (local.set $x1f (f32.load (i32.add (local.get $xr) (local.get $i))))
              (local.set $x2f (f32.load (i32.add (i32.add (local.get $xr) (local.get $h4)) (local.get $i))))
              (f32.store (i32.add (local.get $yr) (local.get $i))
                (f32.sub (f32.mul (local.get $x1f) (local.get $cf)) (f32.mul (local.get $x2f) (local.get $sf))))
              (f32.store (i32.add (i32.add (local.get $yr) (local.get $h4)) (local.get $i))
                (f32.add (f32.mul (local.get $x2f) (local.get $cf)) (f32.mul (local.get $x1f) (local.get $sf))))
              (br_if $one (i32.lt_u (local.tee $i (i32.add (local.get $i) (i32.const 4))) (local.get $h4)))))
          (br_if $head (i32.lt_u (local.tee $h (i32.add (local.get $h) (i32.const 1))) (local.get $H))))
        (br_if $tok (i32.lt_u (local.tee $t (i32.add (local.get $t) (i32.const 1))) (local.get $T)))))))
