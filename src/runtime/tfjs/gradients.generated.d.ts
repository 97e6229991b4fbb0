// Types for the generated bundle beside this file: it only registers gradients (a side effect) and exports nothing.
export {};
