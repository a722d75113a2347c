"""What only the teacher stage needs: its objective (GP2 or SSI + gradient) and its config."""
