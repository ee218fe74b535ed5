"""Steganography: patient data hidden in the pixel values (work in progress: the
reversible embedding, :mod:`.pee`, and the pixel planes, :mod:`.image`)."""
