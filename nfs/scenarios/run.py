import sys, time, subprocess
t=time.monotonic()
r=subprocess.run(["/work/main/.venv/bin/cpkgs","--help"],capture_output=True)
print("cpkgs --help", r.returncode, time.monotonic()-t, flush=True)
open(f"/mnt/ctl/results-{sys.argv[1]}.txt","w").write("PASS boot\n")
