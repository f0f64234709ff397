import sys

from nst_fast_entry import main  # Ctrl-C while the command's modules are imported: one line, 130

sys.exit(main())
