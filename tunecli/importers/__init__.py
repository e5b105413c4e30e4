"""Reading what other tools wrote (verl launch scripts) into tunecli recipes."""
