"""raytrain: Ray-distributed training and evaluation of SMTC and STMAE."""
