"""Jobs: a Flower app directory plus a small job file, and the runs made of them."""
