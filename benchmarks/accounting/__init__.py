"""Size accounting: the packed file (writer, reader, header checks, bit streams, ANS coding), the size report
measured from it, and the command-line tools that read (``inspect``) or rewrite (``repack``) stored files."""
