#!/bin/bash

# Parameters
#SBATCH --cpus-per-task=24
#SBATCH --error=/golden/run/slurm/%j/%j_0_log.err
#SBATCH --gpus-per-node=8
#SBATCH --job-name=bert_large_ag_news
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=/golden/run/slurm/%j/%j_0_log.out
#SBATCH --signal=USR1@120
#SBATCH --time=60
#SBATCH --wckey=submitit

# setup
trap '' USR1
export SUBMITIT_PREEMPT_SIGNAL=USR1

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /golden/run/slurm/%j/%j_%t_log.out --error /golden/run/slurm/%j/%j_%t_log.err --cpus-per-task=24 <PYTHON> -u -m submitit.core._submit /golden/run/slurm/%j
