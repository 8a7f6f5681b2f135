"""launcher: recipe -> plan -> executor -> engine, for fine-tuning BERT-family encoders.

  recipe/      a recipe file, loaded, overridden and validated (launcher.recipe)
  plan/        the recipe resolved into a Plan and its files: plan.json, launch.sh, configs
  executors/   where a plan runs, behind one interface (base.Executor: check, prepare,
               submit, state, cancel, logs): local.py (torchrun here), slurm.py (submitit)
  engine/      what each rank runs from plan.json; imports nothing above it
  checkpoint/  save, publish, verify and load checkpoints; whether one can go on
  commands/    one module per CLI verb (run, render, resume, eval, predict, bench, sweep,
               status, logs, cancel, plan_memory); cli.py parses and dispatches to them
"""

__version__ = "0.1.0"
