"""Import verl launch scripts: read as text, never run.

  bash     the script's structure (commands, if blocks, arrays) through bashlex
  shell    shell words: quotes and expansions as segments (knows nothing about verl)
  expand   word values: variables, defaults, positional parameters, arrays, arithmetic, ${ENV} references
  command  the main_ppo command in a script and its evaluated key=value overrides
  (the key table itself, verl key -> tunecli key, is ``tunecli.config.verl_keys``: `tune train
  KEY=VALUE` and `tune new --set` read verl keys through it too)
  script   ``import_verl_script``: the above put together into ``Choices``
"""
