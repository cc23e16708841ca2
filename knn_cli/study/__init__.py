"""`knn study`: the whole study in one folder, each part an ordinary run or sweep folder, and
`knn report`: that folder as one report beside the published numbers.

    <stamp>_study/
      study.json        the settings, each part's status and wall time, provenance
      gradcheck/k2 ...  one `knn gradcheck` folder per depth (2, 3, 4 and 9 layers)
      configs/          a `knn sweep` folder: the four study configs, N seeds each
      lambda-search/    a `knn lambda-search --coarse --fine --final` folder (3 layers, BN)
      lambda-9layer/    a `knn sweep` folder: the chosen lambda on the 9-layer BN network
      init-sensitivity/ a `knn init-sensitivity` folder
      report.md, report.html, figures/

settings.py    what a study is asked for, the sizes each part trains at, the study's configs
parts.py       the parts, listed once: name, kind of folder, title, and what runs each
folder.py      study.json: settings, provenance, each part's status and wall time
plan.py        what each part will train, and its time on this machine (knn_cli/estimate.py)
runner.py      runs the parts not finished yet, in order, resumably
contents.py    a study folder read into plain data (study.json and each part's records)
published.py   the published numbers (published.yaml) and how a result compares with them
figures.py     the report's comparison figures, drawn from the run folders
render.py      the report as sections, written out as Markdown and self-contained HTML
sections.py    one section per experiment, each number beside the published one
report.py      `knn report`: figures drawn, sections assembled, both files written
"""
