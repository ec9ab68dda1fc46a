# Shell and modulefile templates, shipped as package data `cpkgs_admin.templates`.
