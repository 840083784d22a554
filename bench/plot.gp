# Figures of the MegaMutex bench; bench/run.rb writes the data and runs:
#   gnuplot -e "resdir='bench/results'; series='label1|label2|...'" bench/plot.gp
# cycle.dat:      "contender" median_us p99_us        -> cycle.png
# contention.dat: P serial_ideal throughput...         -> contention.png (hold 1 ms)
if (!exists("resdir")) resdir = "bench/results"
if (!exists("series")) series = "MegaMutex"

set terminal pngcairo size 900,520 enhanced font "DejaVu Sans,10" noenhanced
set encoding utf8

# -- µs per uncontended cycle --------------------------------------------------
set output resdir."/cycle.png"
set title "Uncontended lock cycle (lock + empty block + unlock), median of round medians; p99 as error bar"
set ylabel "µs per cycle (lower is better)"
set style data histogram
set style histogram errorbars gap 2 lw 1
set style fill solid 0.75 border -1
set boxwidth 0.8
set yrange [0:*]
set grid ytics
set xtics rotate by -15 scale 0
set key off
plot resdir."/cycle.dat" using 2:2:3:xtic(1) linecolor rgb "#4477aa", \
     '' using ($0 - 0.22):($2):(sprintf("%.0f", $2)) with labels right offset 0,0.7 notitle

# -- throughput vs P under contention -----------------------------------------
reset
set terminal pngcairo size 900,560 enhanced font "DejaVu Sans,10" noenhanced
set output resdir."/contention.png"
set title "One key, P processes, hold = sleep 1 ms: acquisitions per second"
set xlabel "processes P"
set ylabel "acquisitions / s (higher is better)"
set logscale x 2
set xtics (1, 2, 4, 8, 16, 32, 64)
set xrange [1.5:48]
set yrange [0:*]
set grid
set key below
stats resdir."/contention.dat" using 2 nooutput
ideal = STATS_max
count = 1
do for [i=1:strlen(series)] { if (series[i:i] eq "|") { count = count + 1 } }
title_of(k) = system(sprintf("echo '%s' | cut -d'|' -f%d", series, k))
plot for [k=1:count] resdir."/contention.dat" using 1:(column(k+2)) with linespoints lw 2 pt 7 title title_of(k), \
     ideal with lines dashtype 2 lw 2 lc rgb "black" title sprintf("serial ideal 1/(hold + floor) = %.0f/s", ideal)
