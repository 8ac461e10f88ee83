"""``splatvlm studio``: a local web app that queues prompts, shows each run forming live, and serves the results.

queue.py   the jobs waiting to run, kept in the out-dir (no viser, no torch)
presets.py which presets this machine can run, and what each one measured
live.py    what the trainer reports to while a job runs (step, curves, splats; pause, stop, save now)
runner.py  the thread that runs the queue's jobs one at a time, as ordinary run folders
gallery.py the finished run folders: listing, files, exports on demand
app.py     the viser GUI over all of these, and ``serve``
"""
