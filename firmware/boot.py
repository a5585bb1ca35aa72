# Runs first at every reset: keep it tiny. Settles the heap before main.py builds the app; nothing here can fail.
import gc

gc.collect()
