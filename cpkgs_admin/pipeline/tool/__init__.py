"""`cpkgs install-tool`: cpkgs itself as a sealed env of each installation (wheel.py: cpkgs' own wheel; build.py: the
pipeline with the tool's target; finish.py: its post-process, byte code and checks; switch.py: publish and the
atomic switch of bin/cpkgs)."""
