"""Helpers shared by the benchmark scripts, one job per module:

    timing      time_step, time_interleaved (alternating rounds), measure_step (time + peak memory)
    memory      peak_memory (CUDA allocator peak; on CPU the profiler's allocation events)
    profiling   profile_top_ops (one step under torch.profiler)
    machine     copy_bandwidth, extension_file_info, environment_metadata: what was measured, on what
    report      speedup / memory ratios, tables, targets, the JSON every benchmark writes
    run         use_this_checkout, the common flags and the printed preamble (begin_run)
"""
