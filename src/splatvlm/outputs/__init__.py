"""What a finished splat becomes: renders and GPTEval3D folders, meshes and their colors."""
