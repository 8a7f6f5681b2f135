"""One module per CLI verb, each with `main(args, console) -> int`: run, render, resume, eval,
predict, bench, sweep, status, logs, cancel, plan_memory (`plan-memory`). `launch` is what run,
resume and sweep share (the checks and notes before a launch); `trained` what eval and predict
share (which checkpoint, which data). `launcher.cli` parses and dispatches, nothing else."""
