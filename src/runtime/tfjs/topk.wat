;; Each row's two largest entries for topk_gate on the CPU table (../kernels/cpu-topk.ts), over a memory it imports
;; (e.m: tfjs-backend-wasm's heap, where the router's probabilities lie).
;;
;;   top2(p, T, E, idx)   for t < T: idx[2t], idx[2t + 1] = the indices of the largest and second largest of
;;                        p[t·E .. t·E + E) (f32; E >= 2), ties to the lower index (tf.topk's); idx[2t] = -1 where
;;                        the row holds a NaN (the caller decides those rows itself)
;;   gates2(p, T, E, g, renorm) -> rows with a NaN
;;                        g [T, E] = p kept at each row's two largest (renorm != 0: divided by their sum; in f64,
;;                        stored as f32, the order of cpu-topk.ts's loop), 0 elsewhere; a row holding a NaN is left
;;                        unwritten, and counted
;;   gates2_grad(p, dg, T, E, dp, renorm) -> rows with a NaN
;;                        dp [T, E] of gates2 for dg: at the two kept entries dg (renorm: (dg_e − Σ dg·p/S)/S, S
;;                        their sum, f64), 0 elsewhere; NaN rows as gates2
;;
;; Without branches on the data: comparisons are i32 0/1 and every choice a `select` on i32 (an f32's bits),
;; because router probabilities change every step and a branching pick mispredicts (at 2048 x 8 on fresh random
;; rows the JavaScript pick ran 0.52-0.59 ms a call, this module's path 0.33-0.38: bench/topk-gate.ts).
(module
  (import "e" "m" (memory 1))
  (global $i1 (mut i32) (i32.const 0))
  (global $i2 (mut i32) (i32.const 0))
  (global $nan (mut i32) (i32.const 0))

  ;; the row at byte `row` (E entries): $i1, $i2 its largest and second largest, $nan whether it holds a NaN
  (func $pick (param $row i32) (param $E i32)
    (local $j i32) (local $x f32) (local $xi i32) (local $b1 i32) (local $b2 i32) (local $i1 i32) (local $i2 i32)
    (local $c1 i32) (local $c2 i32) (local $nan i32)
    ;; the first two entries, ordered (equal: index 0 first)
    (local.set $x (f32.load offset=4 (local.get $row)))
    (local.set $c1 (f32.gt (local.get $x) (f32.load (local.get $row))))
    (local.set $nan (i32.or (f32.ne (local.get $x) (local.get $x))
      (f32.ne (f32.load (local.get $row)) (f32.load (local.get $row)))))
    (local.set $i1 (local.get $c1))
    (local.set $i2 (i32.sub (i32.const 1) (local.get $c1)))
    (local.set $b1 (select (i32.load offset=4 (local.get $row)) (i32.load (local.get $row)) (local.get $c1)))
    (local.set $b2 (select (i32.load (local.get $row)) (i32.load offset=4 (local.get $row)) (local.get $c1)))
    (local.set $j (i32.const 2))
    (block $cols_done
      (br_if $cols_done (i32.ge_s (local.get $j) (local.get $E)))
      (loop $cols
        (local.set $xi (i32.load (i32.add (local.get $row) (i32.shl (local.get $j) (i32.const 2)))))
        (local.set $x (f32.reinterpret_i32 (local.get $xi)))
        (local.set $nan (i32.or (local.get $nan) (f32.ne (local.get $x) (local.get $x))))
        (local.set $c1 (f32.gt (local.get $x) (f32.reinterpret_i32 (local.get $b1))))
        (local.set $c2 (f32.gt (local.get $x) (f32.reinterpret_i32 (local.get $b2))))
        ;; x above the first: x first, the first second; else above the second: x second
        (local.set $b2 (select (local.get $b1) (select (local.get $xi) (local.get $b2) (local.get $c2)) (local.get $c1)))
        (local.set $i2 (select (local.get $i1) (select (local.get $j) (local.get $i2) (local.get $c2)) (local.get $c1)))
        (local.set $b1 (select (local.get $xi) (local.get $b1) (local.get $c1)))
        (local.set $i1 (select (local.get $j) (local.get $i1) (local.get $c1)))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br_if $cols (i32.lt_s (local.get $j) (local.get $E)))))
    (global.set $i1 (local.get $i1))
    (global.set $i2 (local.get $i2))
    (global.set $nan (local.get $nan)))

  ;; E zeros from byte `at`
  (func $zero (param $at i32) (param $E i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $at) (i32.shl (local.get $E) (i32.const 2))))
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $at) (local.get $end)))
      (f32.store (local.get $at) (f32.const 0))
      (local.set $at (i32.add (local.get $at) (i32.const 4)))
      (br $l))))

  (func (export "top2") (param $p i32) (param $T i32) (param $E i32) (param $idx i32)
    (local $t i32)
    (block $done
      (br_if $done (i32.le_s (local.get $T) (i32.const 0)))
      (loop $rows
        (call $pick (local.get $p) (local.get $E))
        (i32.store (local.get $idx) (select (i32.const -1) (global.get $i1) (global.get $nan)))
        (i32.store offset=4 (local.get $idx) (global.get $i2))
        (local.set $p (i32.add (local.get $p) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $idx (i32.add (local.get $idx) (i32.const 8)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $t) (local.get $T))))))

  (func (export "gates2") (param $p i32) (param $T i32) (param $E i32) (param $g i32) (param $renorm i32) (result i32)
    (local $t i32) (local $bad i32) (local $a f64) (local $b f64) (local $inv f64) (local $o1 i32) (local $o2 i32)
    (block $done
      (br_if $done (i32.le_s (local.get $T) (i32.const 0)))
      (loop $rows
        (call $pick (local.get $p) (local.get $E))
        (if (global.get $nan)
          (then (local.set $bad (i32.add (local.get $bad) (i32.const 1))))
          (else
            (local.set $o1 (i32.shl (global.get $i1) (i32.const 2)))
            (local.set $o2 (i32.shl (global.get $i2) (i32.const 2)))
            (local.set $a (f64.promote_f32 (f32.load (i32.add (local.get $p) (local.get $o1)))))
            (local.set $b (f64.promote_f32 (f32.load (i32.add (local.get $p) (local.get $o2)))))
            (local.set $inv (select (f64.div (f64.const 1) (f64.add (f64.add (f64.const 0) (local.get $a)) (local.get $b))) (f64.const 1) (local.get $renorm)))
            (call $zero (local.get $g) (local.get $E))
            (f32.store (i32.add (local.get $g) (local.get $o1)) (f32.demote_f64 (f64.mul (local.get $a) (local.get $inv))))
            (f32.store (i32.add (local.get $g) (local.get $o2)) (f32.demote_f64 (f64.mul (local.get $b) (local.get $inv))))))
        (local.set $p (i32.add (local.get $p) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $g (i32.add (local.get $g) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $t) (local.get $T)))))
    (local.get $bad))

  (func (export "gates2_grad") (param $p i32) (param $dg i32) (param $T i32) (param $E i32) (param $dp i32) (param $renorm i32) (result i32)
    (local $t i32) (local $bad i32) (local $a f64) (local $b f64) (local $inv f64) (local $o1 i32) (local $o2 i32)
    (local $ga f64) (local $gb f64) (local $dot f64)
    (block $done
      (br_if $done (i32.le_s (local.get $T) (i32.const 0)))
      (loop $rows
        (call $pick (local.get $p) (local.get $E))
        (if (global.get $nan)
          (then (local.set $bad (i32.add (local.get $bad) (i32.const 1))))
          (else
            (local.set $o1 (i32.shl (global.get $i1) (i32.const 2)))
            (local.set $o2 (i32.shl (global.get $i2) (i32.const 2)))
            (local.set $ga (f64.promote_f32 (f32.load (i32.add (local.get $dg) (local.get $o1)))))
            (local.set $gb (f64.promote_f32 (f32.load (i32.add (local.get $dg) (local.get $o2)))))
            (call $zero (local.get $dp) (local.get $E))
            (if (local.get $renorm)
              (then
                (local.set $a (f64.promote_f32 (f32.load (i32.add (local.get $p) (local.get $o1)))))
                (local.set $b (f64.promote_f32 (f32.load (i32.add (local.get $p) (local.get $o2)))))
                (local.set $inv (f64.div (f64.const 1) (f64.add (f64.add (f64.const 0) (local.get $a)) (local.get $b))))
                (local.set $dot (f64.add (f64.add (f64.const 0)
                  (f64.mul (f64.mul (local.get $ga) (local.get $a)) (local.get $inv)))
                  (f64.mul (f64.mul (local.get $gb) (local.get $b)) (local.get $inv))))
                (f32.store (i32.add (local.get $dp) (local.get $o1)) (f32.demote_f64 (f64.mul (f64.sub (local.get $ga) (local.get $dot)) (local.get $inv))))
                (f32.store (i32.add (local.get $dp) (local.get $o2)) (f32.demote_f64 (f64.mul (f64.sub (local.get $gb) (local.get $dot)) (local.get $inv)))))
              (else
                (f32.store (i32.add (local.get $dp) (local.get $o1)) (f32.demote_f64 (local.get $ga)))
                (f32.store (i32.add (local.get $dp) (local.get $o2)) (f32.demote_f64 (local.get $gb)))))))
        (local.set $p (i32.add (local.get $p) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $dg (i32.add (local.get $dg) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $dp (i32.add (local.get $dp) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $t) (local.get $T)))))
    (local.get $bad)))
