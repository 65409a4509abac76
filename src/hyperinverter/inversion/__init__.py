"""Using any inversion method on files: batch inversion of folders, inversion files, exported generators."""
