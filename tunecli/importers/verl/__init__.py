"""Import verl launch scripts: read as text, never run.

  shell    the shell reader: statements, words, expansions (knows nothing about verl)
  command  the main_ppo command in a script and its evaluated key=value overrides
  keys     verl override key -> tunecli key (``map_verl_override``), and why the others are unmapped
  script   ``import_verl_script``: the above put together into ``Choices``
"""
