;; Each row's two largest entries for topk_gate on the CPU table (../kernels/cpu-topk.ts), over a memory it imports
;; (e.m: tfjs-backend-wasm's heap, where the router's probabilities lie).
;;
;;   top2(p, T, E, idx)   for t < T: idx[2t], idx[2t + 1] = the indices of the largest and second largest of
;;                        p[t·E .. t·E + E) (f32; E >= 2), ties to the lower index (tf.topk's); idx[2t] = -1 where
;;                        the row holds a NaN (the caller decides those rows itself)
;;
;; Without branches on the data: comparisons are i32 0/1 and every choice a `select` on i32 (an f32's bits),
;; because router probabilities change every step and a branching pick mispredicts (at 2048 x 8 on fresh random
;; rows the JavaScript pick ran 0.52-0.59 ms a call, this module's path 0.33-0.38: bench/topk-gate.ts).
(module
  (import "e" "m" (memory 1))
  (func (export "top2") (param $p i32) (param $T i32) (param $E i32) (param $idx i32)
    (local $t i32) (local $j i32) (local $row i32) (local $out i32)
    (local $x f32) (local $xi i32) (local $b1 i32) (local $b2 i32) (local $i1 i32) (local $i2 i32)
    (local $c1 i32) (local $c2 i32) (local $nan i32)
    (block $done
      (br_if $done (i32.le_s (local.get $T) (i32.const 0)))
      (local.set $row (local.get $p))
      (local.set $out (local.get $idx))
      (loop $rows
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
        (i32.store (local.get $out) (select (i32.const -1) (local.get $i1) (local.get $nan)))
        (i32.store offset=4 (local.get $out) (local.get $i2))
        (local.set $row (i32.add (local.get $row) (i32.shl (local.get $E) (i32.const 2))))
        (local.set $out (i32.add (local.get $out) (i32.const 8)))
        (local.set $t (i32.add (local.get $t) (i32.const 1)))
        (br_if $rows (i32.lt_s (local.get $t) (local.get $T)))))))
