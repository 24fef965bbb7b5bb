"""Running grids: presets, grid expansion, one run into its folder (checked, locked, resumable), and the
local, Ray and SLURM executors."""
